"""Encoders: the all-MiniLM-L6-v2 embedder (export + int8) and the rerank stand-in (fine-tune + export + int8)."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from models_lib.common import say, step, write_json
from models_lib.corpus import docstrings, make_query
from models_lib.export import export_to, quantize_variants
from models_lib.hf_meta import ENCODER_META, copy_meta

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

SANITY = ["How do I bake bread at home?", "A recipe for homemade sourdough bread.", "Stock markets fell sharply today."]


def build_embedder(source: Path, out: Path) -> None:
    onnx_dir = out / "onnx"
    with step("HF → ONNX fp32 (optimum, feature-extraction)"):
        export_to(source, "feature-extraction", onnx_dir)
    quantize_variants(onnx_dir, ("int8",), 32, 4, decoder=False)
    copy_meta(source, out, ENCODER_META)
    check_embedder(source, onnx_dir / "model.onnx")


def check_embedder(source: Path, onnx_path: Path) -> None:
    """fp32 ONNX vs sentence-transformers-style torch mean pooling: the export must be exact."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    batch = tokenizer(SANITY, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
    hidden = session.run(["last_hidden_state"], feeds)[0]
    with torch.no_grad():
        reference = AutoModel.from_pretrained(str(source))(**tokenizer(SANITY, padding=True, return_tensors="pt"))[
            0
        ].numpy()
    mask = batch["attention_mask"][..., None]
    pooled = [(h * mask).sum(1) / mask.sum(1) for h in (hidden, reference)]
    cos = (pooled[0] * pooled[1]).sum(1) / (np.linalg.norm(pooled[0], axis=1) * np.linalg.norm(pooled[1], axis=1))
    if cos.min() < 0.99999:
        raise RuntimeError(f"ONNX embeddings differ from torch (cosine {cos.min():.6f})")
    say(f"    check: ONNX fp32 vs torch cosine min {cos.min():.6f}")


def build_reranker_standin(source: Path, out: Path, steps: int, seed: int = 0) -> None:
    """MiniLM body + new 1-logit head, fine-tuned on stdlib docstring retrieval (notes/offline-models.md §8)."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    docs = docstrings()
    random.Random(seed).shuffle(docs)
    held_out, train = docs[:300], docs[300:]
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    model = BertForSequenceClassification.from_pretrained(str(source), num_labels=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-5)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = random.Random(seed)
    with step(f"fine-tune {steps} steps (4 queries x (1 positive + 3 negatives))"):
        model.train()
        started = time.monotonic()
        for index in range(steps):
            pairs, labels = [], []
            for _ in range(4):
                doc = rng.choice(train)
                query = make_query(doc, rng)
                pairs.append((query, doc))
                labels.append(1.0)
                for negative in rng.sample(train, 3):
                    pairs.append((query, negative))
                    labels.append(0.0)
            batch = tokenizer(
                [q for q, _ in pairs],
                [d for _, d in pairs],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            loss = loss_fn(model(**batch).logits.squeeze(-1), torch.tensor(labels))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if (index + 1) % 50 == 0:
                say(f"    step {index + 1}/{steps}: loss {loss.item():.3f} ({time.monotonic() - started:.0f}s)")
    model.eval()
    accuracy = top1_of_10(model, tokenizer, held_out, random.Random(seed + 1), queries=100)
    say(f"    held-out top-1 of 10: {accuracy:.3f}")
    hf_dir = out / ".hf"
    model.config.architectures = ["BertForSequenceClassification"]
    model.save_pretrained(str(hf_dir))
    tokenizer.save_pretrained(str(hf_dir))
    onnx_dir = out / "onnx"
    with step("HF → ONNX fp32 (optimum, text-classification)"):
        export_to(hf_dir, "text-classification", onnx_dir)
    quantize_variants(onnx_dir, ("int8",), 32, 4, decoder=False)
    copy_meta(
        hf_dir, out, ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]
    )
    config = json.loads((out / "config.json").read_text())
    config["onnx_local_standin"] = True
    config["onnx_local_note"] = (
        "Stand-in for tests/benchmarks only, NOT a real reranker: all-MiniLM-L6-v2 body + 1-logit head fine-tuned "
        f"{steps} steps on stdlib docstring retrieval; held-out top-1 of 10 = {accuracy:.3f}."
    )
    write_json(out / "config.json", config)
    import shutil

    shutil.rmtree(hf_dir)


def top1_of_10(model: object, tokenizer: object, docs: list[str], rng: random.Random, queries: int) -> float:
    import torch

    hits = 0
    with torch.no_grad():
        for doc in docs[:queries]:
            query = make_query(doc, rng)
            candidates = [doc, *rng.sample([d for d in docs if d is not doc], 9)]
            batch = tokenizer(
                [query] * 10, candidates, padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            scores = model(**batch).logits.squeeze(-1)  # type: ignore[operator]
            hits += int(int(scores.argmax()) == 0)
    return hits / queries
