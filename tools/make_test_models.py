#!/usr/bin/env python3
"""Builds the tiny random-weight test models committed under tests/fixtures/models/.

Tooling only (Python 3.11 tools venv: `make tools-env`); the plugin never imports it.
Everything is derived from fixed seeds and a synthetic corpus, without network, so
that two runs give byte-identical files (`make fixtures-check`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "models"
MODEL_DIRS = (
    "tiny-bert-embedder",
    "tiny-cross-encoder",
    "tiny-cross-encoder-2label",
    "tiny-qwen2-decoder",
    "tiny-qwen2-decoder-genai",
    "tiny-xlmr-embedder",
    "tiny-xlmr-cross-encoder",
    "tiny-qwen3-reranker",
    "tiny-qwen2-decoder-thinking",
)


def reexec_with_fixed_hash_seed() -> None:
    """str hashing is salted per process; set/dict-of-set orderings must not vary."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="build into a temp dir and compare every file's sha256 with --out instead of writing",
    )
    return parser.parse_args()


def build_all(out: Path) -> None:
    # Heavy imports after the environment is fixed (offline flags, hash seed).
    from fixtures_lib import arch_decoders, bert_models, corpus, genai_decoder, qwen_decoder, tokenizers_build
    from fixtures_lib.common import make_deterministic, write_sums

    make_deterministic(0)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tiny-models-") as tmp:
        work = Path(tmp)
        wordpiece = tokenizers_build.train_wordpiece(corpus.training_corpus(sentences=5000, stdlib_files=60))
        bert_models.build_embedder(wordpiece, work, out / "tiny-bert-embedder")
        bert_models.build_cross_encoder(wordpiece, work, out / "tiny-cross-encoder", num_labels=1)
        bert_models.build_cross_encoder(wordpiece, work, out / "tiny-cross-encoder-2label", num_labels=2)

        bpe = tokenizers_build.train_byte_bpe(
            corpus.training_corpus(sentences=20000, stdlib_files=40), qwen_decoder.VOCAB_SIZE
        )
        hf_dir, expected = qwen_decoder.build_decoder(bpe, work, out / "tiny-qwen2-decoder")
        genai_decoder.build_genai(hf_dir, work, out / "tiny-qwen2-decoder-genai", expected)

        # multilingual encoders and the LLM-style reranker (issue 15)
        from fixtures_lib import llm_reranker, xlmr_models

        unigram = xlmr_models.build_unigram(corpus.training_corpus(sentences=5000, stdlib_files=60))
        xlmr_models.build_embedder(unigram, work, out / "tiny-xlmr-embedder")
        xlmr_models.build_cross_encoder(unigram, work, out / "tiny-xlmr-cross-encoder")
        llm_reranker.build_llm_reranker(work, out / "tiny-qwen3-reranker")
        build_thinking_fixtures(out)
        arch_decoders.build_all(bpe, work, out)  # Llama 3, Gemma 3, Phi-3, Qwen3, Mistral
    write_sums(out)


def build_thinking_fixtures(out: Path) -> None:
    """The reasoning-template variant, copied from the finished tiny-qwen2-decoder."""
    from fixtures_lib import thinking_decoder

    thinking_decoder.build_thinking(out / "tiny-qwen2-decoder", out / "tiny-qwen2-decoder-thinking")


def clear_generated(out: Path) -> None:
    """Removes previous outputs so stale files cannot linger (only our own names: --out may be wrong)."""
    from fixtures_lib.arch_decoders import model_dirs
    from fixtures_lib.common import SUMS_FILE

    for name in (*MODEL_DIRS, *model_dirs()):
        shutil.rmtree(out / name, ignore_errors=True)
    (out / SUMS_FILE).unlink(missing_ok=True)


def check(committed: Path) -> int:
    from fixtures_lib.common import SUMS_FILE, file_hashes

    from reference.files import sha256_file

    with tempfile.TemporaryDirectory(prefix="fixtures-check-") as tmp:
        fresh = Path(tmp) / "models"
        build_all(fresh)
        new, old = file_hashes(fresh), file_hashes(committed)
        new[SUMS_FILE] = sha256_file(fresh / SUMS_FILE)
    if (committed / SUMS_FILE).is_file():
        old[SUMS_FILE] = sha256_file(committed / SUMS_FILE)
    differing = sorted(k for k in new.keys() | old.keys() if new.get(k) != old.get(k))
    if differing:
        print("fixtures differ from a fresh build:")
        for rel in differing:
            state = "missing in committed" if rel not in old else "not generated" if rel not in new else "changed"
            print(f"  {rel} ({state})")
        return 1
    print(f"OK: {len(new)} files byte-identical")
    return 0


def main() -> int:
    reexec_with_fixed_hash_seed()
    args = parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(1, str(REPO_ROOT))  # reference/: code shared with tests/real/ and bench/
    from fixtures_lib.common import env_offline

    env_offline()
    out = args.out.resolve()
    if args.check:
        return check(out)
    start = time.monotonic()
    clear_generated(out)
    build_all(out)
    print(f"wrote {out} in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
