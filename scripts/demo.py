"""`make demo`: real local models answering over the Dify daemon protocol, in this terminal.

Builds the real models into .models/ if they are missing (the first run takes several minutes, offline), starts
the plugin exactly as the Dify plugin daemon does (`python -m main`, JSON lines on stdin/stdout), then streams a
chat answer from Qwen2.5-Coder-0.5B-Instruct (int4, onnxruntime-genai layout), shows an embedding similarity with
all-MiniLM-L6-v2 and a rerank with the stand-in cross-encoder, each with its timings.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.plugin.daemon import PluginProcess, error_of, model_request, streams  # noqa: E402

MODELS = REPO / ".models"
LLM = "qwen2.5-coder-0.5b-instruct-genai"
EMBEDDER = "all-minilm-l6-v2"
RERANKER = "minilm-reranker-standin"
# Every runtime setting left empty, as a new user adds a model: placement shares the cores between the models.


def say(text: str = "") -> None:
    print(text, flush=True)


def ensure_models() -> None:
    missing = [name for name in (LLM, EMBEDDER, RERANKER) if not (MODELS / name).is_dir()]
    if missing:
        say(f"Building the real models ({', '.join(missing)}) into .models/ — the first run takes several minutes…")
        subprocess.run(["make", "models"], cwd=REPO, check=True)


def chat(plugin: PluginProcess, question: str) -> None:
    credentials = {"model_path": LLM}
    say(f"▶ chat with {LLM} (default settings)")
    records = plugin.request(model_request("validate_model_credentials", "llm", "qwen", credentials), timeout=300)
    if records[0]["type"] == "error":
        raise SystemExit(f"loading {LLM} failed: {error_of(records)['message']}")
    say(f"  user: {question}")
    print("  assistant: ", end="", flush=True)
    started = time.perf_counter()
    first_token_at = None
    usage = None
    session = plugin.send(
        model_request(
            "invoke_llm",
            "llm",
            "qwen",
            credentials,
            prompt_messages=[{"role": "user", "content": question}],
            # sampling as a Dify user would set it, with a fixed seed so the demo is reproducible: pure greedy
            # decoding sends a 0.5B model into repetition loops on open-ended prompts
            model_parameters={
                "temperature": 0.7,
                "top_p": 0.8,
                "top_k": 20,
                "repetition_penalty": 1.05,
                "seed": 7,
                "max_tokens": 256,
            },
            stop=[],
            tools=[],
            stream=True,
        )
    )
    for record in plugin.iter_session(session, timeout=600):
        if record["type"] == "error":
            raise SystemExit(f"\nerror: {record['data']['message']}")
        if record["type"] != "stream":
            continue
        delta = record["data"]["delta"]
        text = delta["message"]["content"] or ""
        if text and first_token_at is None:
            first_token_at = time.perf_counter()
        print(text, end="", flush=True)
        usage = delta.get("usage") or usage
    elapsed = time.perf_counter() - started
    say()
    if usage and first_token_at is not None:
        decode_seconds = max(1e-9, elapsed - (first_token_at - started))
        decode_rate = max(0, usage["completion_tokens"] - 1) / decode_seconds
        say(
            f"  ⏱ time to first token {1000 * (first_token_at - started):.0f} ms, "
            f"{usage['completion_tokens']} tokens, {decode_rate:.1f} tokens/s decode, "
            f"prompt {usage['prompt_tokens']} tokens"
        )


def similarity(plugin: PluginProcess) -> None:
    credentials = {"model_path": EMBEDDER}
    query = "How do I bake bread at home?"
    documents = [
        "A recipe for homemade sourdough bread.",
        "The stock market fell sharply on Monday.",
        "Knead the dough, let it rise, then bake at 220 °C.",
    ]
    say(f"\n▶ embedding similarity with {EMBEDDER}")
    plugin.request(model_request("validate_model_credentials", "text-embedding", "minilm", credentials), timeout=300)
    started = time.perf_counter()
    (query_result,) = streams(
        plugin.request(
            model_request(
                "invoke_text_embedding", "text-embedding", "minilm", credentials, texts=[query], input_type="query"
            )
        )
    )
    (docs_result,) = streams(
        plugin.request(
            model_request(
                "invoke_text_embedding", "text-embedding", "minilm", credentials, texts=documents, input_type="document"
            )
        )
    )
    elapsed = time.perf_counter() - started
    query_vector = np.array(query_result["embeddings"][0])
    say(f"  query: {query}")
    for text, vector in zip(documents, docs_result["embeddings"], strict=True):
        say(f"  {float(query_vector @ np.array(vector)):+.3f}  {text}")
    say(f"  ⏱ {1000 * elapsed:.0f} ms for 2 calls (4 texts, {len(query_vector)} dimensions)")


def rerank(plugin: PluginProcess) -> None:
    credentials = {"model_path": RERANKER}
    query = "sort a list in python"
    docs = [
        "Use sorted(iterable) or list.sort() to order the items of a list.",
        "Paris is the capital of France.",
        "Return the number of items in a container.",
        "The stock market fell sharply on Monday.",
    ]
    say(f"\n▶ rerank with {RERANKER} (a stand-in cross-encoder trained on stdlib docstrings, not a real reranker)")
    plugin.request(model_request("validate_model_credentials", "rerank", "rr", credentials), timeout=300)
    started = time.perf_counter()
    (result,) = streams(
        plugin.request(
            model_request(
                "invoke_rerank", "rerank", "rr", credentials, query=query, docs=docs, score_threshold=0.0, top_n=0
            )
        )
    )
    elapsed = time.perf_counter() - started
    say(f"  query: {query}")
    for doc in result["docs"]:
        say(f"  {doc['score']:.3f}  {doc['text']}")
    say(f"  ⏱ {1000 * elapsed:.0f} ms for {len(docs)} pairs")


def main() -> None:
    ensure_models()
    say("Starting the plugin as the Dify daemon does (python -m main, stdio protocol)…")
    plugin = PluginProcess(sys.executable, REPO, env={"ONNX_LOCAL_MODEL_ROOTS": str(MODELS)})
    try:
        plugin.start()
        chat(plugin, "Write a Python function that checks whether a string is a palindrome, then explain it briefly.")
        similarity(plugin)
        rerank(plugin)
    finally:
        plugin.close()


if __name__ == "__main__":
    main()
