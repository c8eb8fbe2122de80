"""`make soak`: thousands of mixed requests, overload and injected faults through the real plugin process.

The plugin runs as the Dify daemon runs it (`python -m main`, JSON lines over stdio, HEARTBEAT_INTERVAL=0.5) with
all three model types loaded, and is driven by `--concurrency` callers (64) sending a mix like a busy install's:
document embeddings of 8–32 chunks, query embeddings, reranks of 10–50 documents, short streamed chats
(max_tokens 16–48) and a few token counts. Mixed in, and beside them on a fault thread:

- malformed requests: unknown model type or action, missing or mistyped fields, bad settings, model paths that do
  not exist or escape the roots, failing validations, empty inputs, a lone surrogate (`"\\ud800"`), invalid UTF-8
  bytes on the wire, a 2 MB text and a 2 MB prompt, bad LLM parameters, a call larger than its queue_limit;
- overload: bursts of calls of `queue_limit` long texts at an embedder instance whose queue_limit is small, beyond
  the 64 callers (busy errors must come back as InvokeServerUnavailableError, quickly);
- a failing batch: a copy of the tiny embedder whose config.json claims 4096 positions (the graph has 512), asked
  for a text longer than 512 tokens, so ONNX Runtime fails on that batch while the model keeps serving;
- model files changed after load: a copy of a tiny model in a temporary model root, loaded, then its files
  deleted, its directory removed, and later restored; another copy corrupted while a call is in flight;
- garbage lines on stdin (not JSON, no session id), and SIGUSR1 (the statistics dump) mid-run.

Every request is classified by what came back: lost (no `end` within --timeout), duplicated (a second `end` or
records after `end`), a protocol violation (an error that is not the only record before `end`), a result of the
wrong shape, or an outcome (`ok` or the error record's `error_type`) checked against what the request deserves:
bad input → InvokeBadRequestError (CredentialsValidateFailedError for validations), overload →
InvokeServerUnavailableError ("busy"), a failing batch → InvokeServerUnavailableError. Requests rejected by the
dify_plugin SDK before they reach the plugin's code come back with the SDK's own class (pydantic ValidationError,
KeyError, ValueError, or an `end` with nothing before it); those are listed as SDK deviations, failures only with
--strict. Also reported: heartbeat gaps, latency percentiles per request kind, the plugin's RSS every second (RSS
after the first 1,000 requests and after the last), stray stdout. JSON and a PNG of RSS go to bench/results/.
Exit status 1 if anything was lost, duplicated, misclassed or malformed, a heartbeat gap reached 2 s, busy errors
took over 2 s (p99), the plugin wrote non-protocol stdout or died.

    make soak                                     real models (.models/, `make models`), 5,000 requests
    make soak SOAK_ARGS="--models tiny --requests 2000"
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.corpus import mixed_chunks, queries  # noqa: E402
from tests.plugin.daemon import PluginProcess, ProtocolError, model_request  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "models"
RESULTS = REPO / "bench" / "results"
HEARTBEAT_GAP_LIMIT_S = 2.0
TINY_SETTINGS = {"intra_op_threads": "1", "cpu_affinity": "none"}

OK = "ok"
EMPTY = "empty"  # an `end` with no stream or error record before it
BAD_REQUEST = "InvokeBadRequestError"
BAD_CREDENTIALS = "CredentialsValidateFailedError"
UNAVAILABLE = "InvokeServerUnavailableError"
BUSY = "InvokeServerUnavailableError/busy"  # the overload refusal ("model … is busy")


# -- models --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSet:
    name: str
    root: Path
    embedder: str
    reranker: str
    llm: str
    settings: dict[str, str]  # applied to the three main models (real: every field empty, as a user leaves it)


TINY = ModelSet("tiny", FIXTURES, "tiny-bert-embedder", "tiny-cross-encoder", "tiny-qwen2-decoder", TINY_SETTINGS)
REAL = ModelSet(
    "real", REPO / ".models", "all-minilm-l6-v2", "minilm-reranker-standin", "qwen2.5-coder-0.5b-instruct-genai", {}
)
MODEL_SETS = {"tiny": TINY, "real": REAL}

# Copies of the tiny embedder in a temporary model root: the fault targets (always tiny, whatever --models says).
GONE, CORRUPT, BROKEN = "soak-gone", "soak-corrupt", "soak-broken"


def prepare_fault_models(root: Path) -> None:
    for name in (GONE, CORRUPT, BROKEN):
        shutil.copytree(FIXTURES / "tiny-bert-embedder", root / name)
    config_path = root / BROKEN / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["max_position_embeddings"] = 4096  # a lie: the graph's position table has 512 rows
    config_path.write_text(json.dumps(config), encoding="utf-8")


@dataclass
class Mix:
    """What the callers send. `weights` are per request kind; `fault` draws one of FAULT_KINDS uniformly."""

    weights: dict[str, float] = field(
        default_factory=lambda: {
            "documents": 0.34,
            "query": 0.20,
            "rerank": 0.15,
            "chat": 0.15,
            "num_tokens_embed": 0.03,
            "num_tokens_llm": 0.03,
            "fault": 0.10,
        }
    )
    doc_chunks: tuple[int, int] = (8, 32)
    rerank_docs: tuple[int, int] = (10, 50)
    chat_tokens: tuple[int, int] = (16, 48)
    queue_limit: int = 16  # of the overload target instance
    burst_calls: int = 48  # calls per overload burst, each of queue_limit long texts
    bursts: int = 2
    probe_interval: float = 0.5  # the fault thread's pace (requests to the changed model directories)

    @classmethod
    def light(cls) -> Mix:
        """For `make test` on 2 cores: small batches, short chats."""
        return cls(doc_chunks=(8, 16), rerank_docs=(10, 20), chat_tokens=(8, 16), burst_calls=24)


# -- requests ------------------------------------------------------------------------------------------------------


@dataclass
class Spec:
    """One request: what is sent, which outcomes are right for it, and how to check a result."""

    kind: str
    data: dict[str, Any] | None
    expect: frozenset[str]
    describe: str
    sdk: frozenset[str] = frozenset()  # outcomes the dify_plugin SDK gives before the plugin's code runs
    raw: bytes | None = None  # a raw protocol line (invalid UTF-8); {session} is filled in
    check: Callable[[list[dict[str, Any]]], str | None] | None = None
    timeout: float | None = None


@dataclass
class Result:
    kind: str
    session: str
    outcome: str  # ok / empty / an error_type (/busy) / lost / protocol / bad_result
    verdict: str  # "pass", "sdk", or the failure: lost, protocol, bad_result, misclassed
    latency_ms: float
    ttft_ms: float | None
    sent_at: float
    message: str
    describe: str
    expect: list[str]


def _streams(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["data"] for r in records if r["type"] == "stream"]


def check_embeddings(count: int) -> Callable[[list[dict[str, Any]]], str | None]:
    def check(records: list[dict[str, Any]]) -> str | None:
        payloads = _streams(records)
        if len(payloads) != 1:
            return f"{len(payloads)} stream records, expected 1"
        vectors = payloads[0].get("embeddings")
        if not isinstance(vectors, list) or len(vectors) != count:
            return f"{len(vectors) if isinstance(vectors, list) else vectors!r} embeddings for {count} texts"
        if count and len({len(v) for v in vectors}) != 1:
            return "embeddings of different dimensions"
        return None

    return check


def check_rerank(count: int) -> Callable[[list[dict[str, Any]]], str | None]:
    def check(records: list[dict[str, Any]]) -> str | None:
        payloads = _streams(records)
        if len(payloads) != 1:
            return f"{len(payloads)} stream records, expected 1"
        docs = payloads[0].get("docs", [])
        if sorted(d["index"] for d in docs) != list(range(count)):
            return f"rerank returned indices {sorted(d['index'] for d in docs)[:5]}… for {count} docs"
        scores = [d["score"] for d in docs]
        if scores != sorted(scores, reverse=True):
            return "rerank scores not in descending order"
        return None

    return check


def check_chat(max_tokens: int, stream: bool = True) -> Callable[[list[dict[str, Any]]], str | None]:
    """Streamed: content chunks, usage and finish_reason on the last only. Blocking: one chunk with usage (the
    SDK turns the LLMResult into a chunk without a finish_reason)."""

    def check(records: list[dict[str, Any]]) -> str | None:
        chunks = _streams(records)
        if not chunks or (not stream and len(chunks) != 1):
            return f"{len(chunks)} chunks"
        last = chunks[-1]["delta"]
        usage = last.get("usage")
        if usage is None or (stream and last.get("finish_reason") not in ("stop", "length", "tool_calls")):
            return f"last chunk without usage/finish_reason: {str(last)[:200]}"
        if not 0 <= usage["completion_tokens"] <= max_tokens:
            return f"{usage['completion_tokens']} completion tokens for max_tokens={max_tokens}"
        if any(c["delta"].get("usage") is not None for c in chunks[:-1]):
            return "usage before the last chunk"
        return None

    return check


def check_num_tokens(count: int | None) -> Callable[[list[dict[str, Any]]], str | None]:
    def check(records: list[dict[str, Any]]) -> str | None:
        payloads = _streams(records)
        if len(payloads) != 1:
            return f"{len(payloads)} stream records, expected 1"
        value = payloads[0].get("num_tokens")
        if count is None:
            return None if isinstance(value, int) and value > 0 else f"num_tokens {value!r}"
        return None if isinstance(value, list) and len(value) == count else f"num_tokens {str(value)[:80]}"

    return check


def check_validated(records: list[dict[str, Any]]) -> str | None:
    payloads = _streams(records)
    return None if payloads and payloads[0].get("result") is True else f"validation answered {str(payloads)[:200]}"


class Requests:
    """Builds every kind of request for one model set; `rng` makes each one reproducible."""

    def __init__(self, models: ModelSet, mix: Mix) -> None:
        self.models, self.mix = models, mix
        self.embedder = {"model_path": models.embedder, **models.settings}
        self.reranker = {"model_path": models.reranker, **models.settings}
        self.llm = {"model_path": models.llm, **models.settings}
        # its own instance, with a small queue: the overload target
        self.busy = {**self.embedder, "queue_limit": str(mix.queue_limit)}
        tiny = {"intra_op_threads": "1", "cpu_affinity": "none"}
        self.gone = {"model_path": GONE, **tiny}
        self.corrupt = {"model_path": CORRUPT, **tiny}
        self.broken = {"model_path": BROKEN, "context_size": "1024", **tiny}
        self.chunks = mixed_chunks(3000)
        self.long_chunks = [c for c in self.chunks if len(c.split()) >= 128] or self.chunks
        self.queries = queries(500)
        self.disabled: set[str] = set()  # fault kinds the run cannot inject (a fault model refused at load)

    # the loads done before the run: (name, model type, model, credentials)
    def loads(self) -> list[tuple[str, str, str, dict[str, str]]]:
        return [
            ("embedder", "text-embedding", "emb", self.embedder),
            ("reranker", "rerank", "rr", self.reranker),
            ("llm", "llm", "chat", self.llm),
            ("overload target", "text-embedding", "emb-busy", self.busy),
            ("model to remove", "text-embedding", "emb-gone", self.gone),
            ("model to corrupt", "text-embedding", "emb-corrupt", self.corrupt),
            ("failing-batch model", "text-embedding", "emb-broken", self.broken),
        ]

    @staticmethod
    def fresh(texts: list[str], rng: random.Random) -> list[str]:
        """The texts made unique, so the embedding cache cannot answer them (new documents, as in indexing)."""
        tag = f"{rng.getrandbits(40):010x}"
        return [f"{text} [{tag}.{i}]" for i, text in enumerate(texts)]

    # normal traffic
    def embed(self, credentials: dict, model: str, texts: list[str], input_type: str = "document") -> dict:
        return model_request(
            "invoke_text_embedding", "text-embedding", model, credentials, texts=texts, input_type=input_type
        )

    def documents(self, rng: random.Random) -> Spec:
        texts = self.fresh(rng.sample(self.chunks, rng.randint(*self.mix.doc_chunks)), rng)
        data = self.embed(self.embedder, "emb", texts)
        return Spec(
            "documents", data, frozenset({OK}), f"embed {len(texts)} documents", check=check_embeddings(len(texts))
        )

    def query(self, rng: random.Random) -> Spec:
        data = self.embed(self.embedder, "emb", [rng.choice(self.queries)], "query")
        return Spec("query", data, frozenset({OK}), "embed 1 query", check=check_embeddings(1))

    def rerank(self, rng: random.Random) -> Spec:
        docs = rng.sample(self.chunks, rng.randint(*self.mix.rerank_docs))
        data = model_request(
            "invoke_rerank",
            "rerank",
            "rr",
            self.reranker,
            query=rng.choice(self.queries),
            docs=docs,
            score_threshold=0.0,
            top_n=0,
        )
        return Spec("rerank", data, frozenset({OK}), f"rerank {len(docs)} docs", check=check_rerank(len(docs)))

    def messages(self, rng: random.Random) -> list[dict[str, str]]:
        messages = [{"role": "user", "content": f"In one sentence: {rng.choice(self.queries)}"}]
        if rng.random() < 0.5:
            messages.insert(0, {"role": "system", "content": "You are a concise assistant."})
        return messages

    def chat_request(self, messages: list[dict], parameters: dict, stream: bool = True, **fields: Any) -> dict:
        return model_request(
            "invoke_llm",
            "llm",
            "chat",
            self.llm,
            prompt_messages=messages,
            model_parameters=parameters,
            stop=fields.pop("stop", None),
            tools=None,
            stream=stream,
            **fields,
        )

    def chat(self, rng: random.Random) -> Spec:
        max_tokens = rng.randint(*self.mix.chat_tokens)
        parameters: dict[str, Any] = {"temperature": 0.0, "max_tokens": max_tokens}
        if rng.random() < 0.5:
            parameters.update(temperature=0.8, top_p=0.9, seed=rng.randrange(1 << 16))
        stream = rng.random() < 0.9
        data = self.chat_request(self.messages(rng), parameters, stream, stop=["\n\n"] if rng.random() < 0.3 else None)
        describe = f"chat max_tokens={max_tokens} {'streamed' if stream else 'blocking'}"
        return Spec("chat", data, frozenset({OK}), describe, check=check_chat(max_tokens, stream))

    def num_tokens_embed(self, rng: random.Random) -> Spec:
        texts = rng.sample(self.chunks, rng.randint(1, 8))
        data = model_request("get_text_embedding_num_tokens", "text-embedding", "emb", self.embedder, texts=texts)
        return Spec(
            "num_tokens_embed",
            data,
            frozenset({OK}),
            f"count tokens of {len(texts)} texts",
            check=check_num_tokens(len(texts)),
        )

    def num_tokens_llm(self, rng: random.Random) -> Spec:
        data = model_request(
            "get_llm_num_tokens", "llm", "chat", self.llm, prompt_messages=self.messages(rng), tools=[]
        )
        return Spec("num_tokens_llm", data, frozenset({OK}), "count prompt tokens", check=check_num_tokens(None))

    # faults mixed into the traffic
    def fault(self, name: str, rng: random.Random) -> Spec:
        text = rng.choice(self.chunks)
        bad = frozenset({BAD_REQUEST})
        ok_or_bad = frozenset({OK, BAD_REQUEST})
        if name == "unknown_model_type":  # a valid enum value this provider does not implement
            data = model_request("invoke_tts", "tts", "t", {}, content_text="hi", voice="v", tenant_id="t")
            return Spec(name, data, bad, "invoke_tts on model_type tts", sdk=frozenset({"KeyError"}))
        if name == "invalid_model_type":
            data = {**self.embed(self.embedder, "emb", [text]), "model_type": "hologram"}
            return Spec(name, data, bad, "model_type 'hologram'", sdk=frozenset({"ValidationError"}))
        if name == "unknown_action":
            data = {**self.embed(self.embedder, "emb", [text]), "action": "invoke_teleport"}
            return Spec(name, data, bad, "action 'invoke_teleport'", sdk=frozenset({EMPTY}))
        if name == "missing_field":
            data = self.embed(self.embedder, "emb", [text])
            del data["texts"]
            return Spec(name, data, bad, "invoke_text_embedding without texts", sdk=frozenset({"ValidationError"}))
        if name == "wrong_field_type":
            data = self.embed(self.embedder, "emb", [text])
            data["texts"] = text
            return Spec(name, data, bad, "texts is a string", sdk=frozenset({"ValidationError"}))
        if name == "bad_setting":
            data = self.embed({**self.embedder, "max_batch_size": "lots"}, "emb", [text])
            return Spec(name, data, bad, "invoke with max_batch_size='lots'")
        if name == "bad_llm_setting":
            credentials = {**self.llm, "max_generation_seconds": "-5"}
            data = {**self.chat_request(self.messages(rng), {"max_tokens": 8}), "credentials": credentials}
            return Spec(name, data, bad, "chat with max_generation_seconds='-5'")
        if name == "missing_model":
            data = self.embed({**self.embedder, "model_path": "no-such-model"}, "emb", [text])
            return Spec(name, data, bad, "invoke with model_path='no-such-model'")
        if name == "path_escape":
            data = model_request(
                "invoke_rerank",
                "rerank",
                "rr",
                {**self.reranker, "model_path": "../../../etc"},
                query="q",
                docs=["a"],
                score_threshold=0.0,
                top_n=0,
            )
            return Spec(name, data, bad, "rerank with model_path='../../../etc'")
        if name == "validate_bad_path":
            data = model_request("validate_model_credentials", "llm", "chat", {**self.llm, "model_path": "/proc/self"})
            return Spec(name, data, frozenset({BAD_CREDENTIALS}), "validate model_path='/proc/self'")
        if name == "validate_bad_setting":
            data = model_request(
                "validate_model_credentials", "text-embedding", "emb", {**self.embedder, "cpu_affinity": "4095"}
            )
            return Spec(name, data, frozenset({BAD_CREDENTIALS}), "validate cpu_affinity='4095'")
        if name == "empty_texts":
            data = self.embed(self.embedder, "emb", [])
            return Spec(name, data, ok_or_bad, "embed texts=[]", check=check_embeddings(0))
        if name == "empty_string":
            data = self.embed(self.embedder, "emb", ["", text])
            return Spec(name, data, ok_or_bad, "embed ['', text]", check=check_embeddings(2))
        if name == "rerank_no_docs":
            data = model_request(
                "invoke_rerank", "rerank", "rr", self.reranker, query="q", docs=[], score_threshold=0.0, top_n=0
            )
            return Spec(name, data, ok_or_bad, "rerank docs=[]", check=check_rerank(0))
        if name == "lone_surrogate":
            data = self.embed(self.embedder, "emb", [f"{text[:40]} \ud800 {text[40:80]}", "\udfff"], "query")
            return Spec(name, data, frozenset({OK}), "embed texts with lone surrogates", check=check_embeddings(2))
        if name == "lone_surrogate_chat":
            data = self.chat_request([{"role": "user", "content": "say hi \ud83d"}], {"max_tokens": 8})
            return Spec(name, data, frozenset({OK}), "chat with a lone high surrogate", check=check_chat(8))
        if name == "invalid_utf8":
            data = self.embed(self.embedder, "emb", ["PLACEHOLDER"])
            line = json.dumps({"session_id": "{session}", "event": "request", "data": data}).encode()
            raw = line.replace(b"PLACEHOLDER", b"caf\xc3\xa9 \xff\xfe \xed\xa0\x80 broken")
            return Spec(
                name, None, frozenset({OK}), "embed a text of invalid UTF-8 bytes", raw=raw, check=check_embeddings(1)
            )
        if name == "huge_text":
            texts = ["lorem ipsum dolor sit amet " * 78_000]  # ~2.1 MB
            data = self.embed(self.embedder, "emb", texts)
            return Spec(name, data, ok_or_bad, "embed one 2 MB text", check=check_embeddings(1))
        if name == "huge_prompt":
            data = self.chat_request(
                [{"role": "user", "content": "lorem ipsum dolor sit amet " * 78_000}], {"max_tokens": 8}
            )
            return Spec(name, data, bad, "chat with a 2 MB prompt")
        if name == "bad_llm_parameters":
            data = self.chat_request(self.messages(rng), {"max_tokens": 0, "temperature": -1})
            return Spec(name, data, bad, "chat max_tokens=0 temperature=-1", sdk=frozenset({"ValueError"}))
        if name == "no_messages":
            data = self.chat_request([], {"max_tokens": 8})
            return Spec(name, data, bad, "chat prompt_messages=[]")
        if name == "oversize_call":  # larger than the instance's queue_limit: could never be queued
            texts = self.fresh([rng.choice(self.chunks) for _ in range(self.mix.queue_limit * 4)], rng)
            data = self.embed(self.busy, "emb-busy", texts)
            return Spec(name, data, bad, f"embed {len(texts)} texts, queue_limit={self.mix.queue_limit}")
        if name == "failing_batch":  # > 512 tokens on a graph with 512 positions: ONNX Runtime fails the batch
            data = self.embed(self.broken, "emb-broken", [" ".join(self.long_chunks[0].split()[:64]) * 20])
            return Spec(name, data, frozenset({UNAVAILABLE}), "embed 1,280 words on the failing-batch model")
        raise KeyError(name)

    # the fault thread's requests
    def overload(self, rng: random.Random) -> Spec:
        texts = self.fresh([rng.choice(self.long_chunks) for _ in range(self.mix.queue_limit)], rng)
        data = self.embed(self.busy, "emb-busy", texts)
        describe = f"burst call of {len(texts)} long texts, queue_limit={self.mix.queue_limit}"
        return Spec("overload", data, frozenset({OK, BUSY}), describe, check=check_embeddings(len(texts)))

    def changed_model(self, which: str, state: str, rng: random.Random, texts: int = 1) -> Spec:
        credentials, model = (self.gone, "emb-gone") if which == "gone" else (self.corrupt, "emb-corrupt")
        data = self.embed(credentials, model, [rng.choice(self.chunks) for _ in range(texts)])
        # Once its files changed, a loaded model may go on serving from memory or refuse with a bad request (the
        # files are the user's to fix); nothing else. Restored files must load again.
        expect = frozenset({OK}) if state in ("loaded", "restored") else frozenset({OK, BAD_REQUEST})
        kind = f"model_{'removed' if which == 'gone' else 'corrupted'}:{state}"
        return Spec(
            kind, data, expect, f"embed {texts} text(s) with {model}, files {state}", check=check_embeddings(texts)
        )


FAULT_KINDS = (
    "unknown_model_type",
    "invalid_model_type",
    "unknown_action",
    "missing_field",
    "wrong_field_type",
    "bad_setting",
    "bad_llm_setting",
    "missing_model",
    "path_escape",
    "validate_bad_path",
    "validate_bad_setting",
    "empty_texts",
    "empty_string",
    "rerank_no_docs",
    "lone_surrogate",
    "lone_surrogate_chat",
    "invalid_utf8",
    "bad_llm_parameters",
    "no_messages",
    "oversize_call",
    "failing_batch",
)
NORMAL_KINDS = ("documents", "query", "rerank", "chat", "num_tokens_embed", "num_tokens_llm")
# huge_text and huge_prompt (2 MB) are sent once each by the fault thread, at a known time (they move RSS)


class Plan:
    """The callers' requests, drawn one by one (thread-safe); request i is the same in every run with one seed."""

    def __init__(self, requests: Requests, total: int, seed: int, seconds: float | None) -> None:
        self.requests, self.total, self.seed, self.seconds = requests, total, seed, seconds
        self.issued = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.fault_kinds = [k for k in FAULT_KINDS if k not in requests.disabled]
        weights = requests.mix.weights
        self.kinds, self.weights = list(weights), list(weights.values())
        # every fault kind once within the first fifth of the run (a --seconds cap may end it early), then at random
        span = max(len(self.fault_kinds), total // 5)
        self.forced = {round((i + 0.5) * span / len(self.fault_kinds)): k for i, k in enumerate(self.fault_kinds)}

    def progress(self) -> float:
        by_count = self.issued / max(1, self.total)
        by_time = (time.monotonic() - self.started) / self.seconds if self.seconds else 0.0
        return min(1.0, max(by_count, by_time))

    def next(self) -> Spec | None:
        with self._lock:
            if self.issued >= self.total or (self.seconds and time.monotonic() - self.started >= self.seconds):
                return None
            index = self.issued
            self.issued += 1
            rng = random.Random(self.seed * 1_000_003 + index)
            kind = self.forced.get(index) or rng.choices(self.kinds, self.weights)[0]
            if kind == "fault" or kind in FAULT_KINDS:
                name = kind if kind in FAULT_KINDS else rng.choice(self.fault_kinds)
                return self.requests.fault(name, rng)
            return getattr(self.requests, kind)(rng)


# -- the run -------------------------------------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))], 1)

    return {"n": len(ordered), "p50": at(50), "p90": at(90), "p99": at(99), "max": round(ordered[-1], 1)}


def read_status(pid: int) -> tuple[float, int]:
    """VmRSS in MB and the thread count of a process."""
    rss, threads = 0.0, 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


@dataclass
class SoakConfig:
    models: ModelSet = TINY
    requests: int = 5000
    concurrency: int = 64
    seconds: float | None = None
    timeout: float = 120.0
    seed: int = 0
    mix: Mix = field(default_factory=Mix)
    strict: bool = False  # SDK deviations count as misclassed
    busy_p99_limit_ms: float = 2000.0
    first_mark: int = 1000  # RSS "after the first N requests"
    python: str = sys.executable
    verbose: bool = True


class Soak:
    def __init__(self, config: SoakConfig) -> None:
        self.config = config
        self.tmp = Path(tempfile.mkdtemp(prefix="onnx-soak-"))
        prepare_fault_models(self.tmp)
        self.requests = Requests(config.models, config.mix)
        roots = f"{config.models.root.resolve()}:{self.tmp}"
        self.plugin = PluginProcess(config.python, REPO, env={"ONNX_LOCAL_MODEL_ROOTS": roots})
        self._send_lock = threading.Lock()
        self._results_lock = threading.Lock()
        self.results: list[Result] = []
        self.sent: set[str] = set()
        self.rss: list[tuple[float, float, int, int]] = []  # (s since start, MB, threads, completed)
        self.rss_marks: dict[str, float] = {}
        self.events: list[dict[str, Any]] = []
        self.loads: dict[str, Any] = {}
        self.garbage_lines = 0
        self.main_done = threading.Event()
        self.stop_sampling = threading.Event()
        self.t0 = time.monotonic()
        self.load_average = os.getloadavg()

    def log(self, message: str) -> None:
        if self.config.verbose:
            print(f"[{time.monotonic() - self.t0:7.1f}s] {message}", file=sys.stderr, flush=True)

    # protocol
    def send(self, spec: Spec) -> str:
        session = uuid.uuid4().hex
        process = self.plugin
        assert process.proc is not None and process.proc.stdin is not None
        with self._send_lock:
            self.sent.add(session)
            if spec.raw is not None:
                process._queue(session)
                process.proc.stdin.write(spec.raw.replace(b"{session}", session.encode()) + b"\n")
                process.proc.stdin.flush()
            else:
                process.send(spec.data or {}, session_id=session)
        return session

    def write_raw(self, line: bytes) -> None:
        process = self.plugin
        assert process.proc is not None and process.proc.stdin is not None
        with self._send_lock:
            process.proc.stdin.write(line + b"\n")
            process.proc.stdin.flush()

    def execute(self, spec: Spec, barrier: threading.Barrier | None = None) -> Result:
        if barrier is not None:
            barrier.wait()
        session = self.send(spec)
        sent_at = time.monotonic()
        records: list[dict[str, Any]] = []
        ttft: float | None = None
        lost = False
        try:
            for record in self.plugin.iter_session(session, timeout=spec.timeout or self.config.timeout):
                records.append(record)
                if ttft is None and record.get("type") == "stream":
                    ttft = (time.monotonic() - sent_at) * 1000
        except ProtocolError:
            lost = True
        latency = (time.monotonic() - sent_at) * 1000
        outcome, verdict, message = self.judge(spec, records, lost)
        result = Result(
            spec.kind,
            session,
            outcome,
            verdict,
            latency,
            ttft,
            sent_at - self.t0,
            message,
            spec.describe,
            sorted(spec.expect),
        )
        with self._results_lock:
            self.results.append(result)
            completed = len(self.results)
        if completed == self.config.first_mark and self.plugin.proc is not None:
            self.rss_marks["after_first_mb"] = read_status(self.plugin.proc.pid)[0]
        if verdict not in ("pass", "sdk"):
            self.log(f"{verdict}: {spec.kind} ({spec.describe}) → {outcome} {message[:160]}")
        return result

    def judge(self, spec: Spec, records: list[dict[str, Any]], lost: bool) -> tuple[str, str, str]:
        if lost:
            return "lost", "lost", f"no end within {spec.timeout or self.config.timeout}s after {len(records)} records"
        kinds = [r.get("type") for r in records[:-1]]
        errors = [r["data"] for r in records if r.get("type") == "error"]
        if any(k not in ("stream", "error") for k in kinds) or (errors and kinds != ["error"]):
            return "protocol", "protocol", f"records before end: {kinds[:10]}"
        message = ""
        if errors:
            outcome = str(errors[0].get("error_type"))
            message = str(errors[0].get("message", ""))
            if outcome == UNAVAILABLE and " is busy" in message:
                outcome = BUSY
        elif not kinds:
            outcome = EMPTY
        else:
            outcome = OK
            if spec.check is not None and (problem := spec.check(records)) is not None:
                return "bad_result", "bad_result", problem
        if outcome in spec.expect:
            return outcome, "pass", message
        if outcome == BUSY and OK in spec.expect and BAD_REQUEST not in spec.expect:
            return outcome, "pass", message  # normal traffic may be refused as overload
        if outcome in spec.sdk:
            return outcome, ("misclassed" if self.config.strict else "sdk"), message
        return outcome, "misclassed", message

    # threads
    def sample_rss(self) -> None:
        assert self.plugin.proc is not None
        pid = self.plugin.proc.pid
        while True:
            try:
                rss, threads = read_status(pid)
            except (FileNotFoundError, ProcessLookupError):
                return
            self.rss.append((round(time.monotonic() - self.t0, 2), round(rss, 1), threads, len(self.results)))
            if self.stop_sampling.wait(1.0):
                return

    def caller(self, plan: Plan) -> None:
        while (spec := plan.next()) is not None:
            self.execute(spec)

    def event(self, label: str, name: str, plan: Plan, started: float | None = None, **details: Any) -> None:
        """Record an injected fault (`label`: a word or two for the chart); `started` if it began before now."""
        at = (started or time.monotonic()) - self.t0
        entry = {"t": round(at, 2), "progress": round(plan.progress(), 3), "label": label, "event": name}
        self.events.append({**entry, **details})
        self.log(f"fault: {name} {details if details else ''}")

    def overload(self, plan: Plan, rng: random.Random) -> None:
        started = time.monotonic()
        specs = [self.requests.overload(rng) for _ in range(self.config.mix.burst_calls)]
        specs.append(self.requests.fault("oversize_call", rng))
        barrier = threading.Barrier(len(specs))
        threads = [threading.Thread(target=self.execute, args=(spec, barrier)) for spec in specs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.event("burst", "overload burst", plan, started, calls=len(specs), queue_limit=self.config.mix.queue_limit)

    def faults(self, plan: Plan) -> None:
        """The sequential fault thread: timed events, and requests to the model directories it changes."""
        rng = random.Random(self.config.seed + 7)
        state = {"gone": "loaded", "corrupt": "loaded"}
        tmp = self.tmp

        def garbage() -> None:
            for line in (
                b"this is not json",
                b'{"event": "request"}',
                b"[1, 2, 3]",
                b"\x00\xff" * 1000,
                b'{"session_id": "soak-garbage", "event": "nonsense", "data": {}}',
                b"x" * 1_000_000,
            ):
                self.write_raw(line)
                self.garbage_lines += 1
            self.event("garbage", "garbage lines on stdin", plan, lines=6)

        def delete_files() -> None:
            (tmp / GONE / "model.onnx").unlink()
            (tmp / GONE / "tokenizer.json").unlink()
            state["gone"] = "files_deleted"
            self.event("files deleted", "model.onnx and tokenizer.json of a loaded model deleted", plan, model=GONE)

        def remove_dir() -> None:
            shutil.rmtree(tmp / GONE)
            state["gone"] = "dir_removed"
            self.event("dir removed", "directory of a loaded model removed", plan, model=GONE)

        def restore() -> None:
            shutil.copytree(FIXTURES / "tiny-bert-embedder", tmp / GONE)
            state["gone"] = "restored"
            self.event("restored", "removed model directory restored", plan, model=GONE)

        def corrupt_in_flight() -> None:
            spec = self.requests.changed_model("corrupt", "corrupted_in_flight", rng, texts=64)
            worker = threading.Thread(target=self.execute, args=(spec,))
            worker.start()
            time.sleep(0.005)
            (tmp / CORRUPT / "model.onnx").write_bytes(b"\x08\x07garbage" * 4096)
            (tmp / CORRUPT / "tokenizer.json").write_text("{not json", encoding="utf-8")
            state["corrupt"] = "corrupted"
            worker.join()
            self.event(
                "corrupted",
                "model.onnx and tokenizer.json of a loaded model corrupted, a call in flight",
                plan,
                model=CORRUPT,
            )

        def usr1() -> None:
            assert self.plugin.proc is not None
            os.kill(self.plugin.proc.pid, signal.SIGUSR1)
            self.event("SIGUSR1", "SIGUSR1 (statistics dump)", plan)

        def huge(name: str) -> Callable[[], None]:
            def send() -> None:
                started = time.monotonic()
                result = self.execute(self.requests.fault(name, rng))
                self.event(
                    name.replace("huge_", "2 MB "),
                    f"{name}: {result.describe}",
                    plan,
                    started,
                    outcome=result.outcome,
                    ms=round(result.latency_ms),
                )

            return send

        bursts = self.config.mix.bursts
        events: list[tuple[float, Callable[[], None]]] = [
            (0.10, garbage),
            (0.30, delete_files),
            (0.40, corrupt_in_flight),
            (0.50, remove_dir),
            (0.55, usr1),
            (0.60, huge("huge_text")),
            (0.70, huge("huge_prompt")),
            (0.80, restore),
        ]
        events += [((i + 1) / (bursts + 1) - 0.03, lambda: self.overload(plan, rng)) for i in range(bursts)]
        events.sort(key=lambda e: e[0])
        pending = list(events)
        for turn in itertools.count():
            done = self.main_done.is_set()
            while pending and (done or pending[0][0] <= plan.progress()):
                pending.pop(0)[1]()
                for which in ("gone", "corrupt"):  # every state of the changed directories gets requests
                    self.execute(self.requests.changed_model(which, state[which], rng))
            if done and not pending:
                break
            which = "gone" if turn % 2 == 0 else "corrupt"
            self.execute(self.requests.changed_model(which, state[which], rng))
            self.main_done.wait(self.config.mix.probe_interval)

    # phases
    def start(self) -> None:
        self.log(f"starting the plugin ({self.config.models.name} models; roots {self.config.models.root}, {self.tmp})")
        self.plugin.start()
        for name, model_type, model, credentials in self.requests.loads():
            started = time.monotonic()
            records = self.plugin.collect(
                self.send(
                    Spec(
                        "load",
                        model_request("validate_model_credentials", model_type, model, credentials),
                        frozenset({OK}),
                        name,
                    )
                ),
                600,
            )
            error = next((r["data"] for r in records if r["type"] == "error"), None)
            self.loads[name] = {"seconds": round(time.monotonic() - started, 2), "error": error}
            if error is not None:
                if name == "failing-batch model":  # the engine may come to refuse the lying config: skip that fault
                    self.requests.disabled.add("failing_batch")
                    self.log(f"{name} refused at load ({error.get('message', '')[:120]}): failing_batch skipped")
                    continue
                raise RuntimeError(f"{name} did not load: {error}")
        self.sent.clear()  # loads are not part of the soak's counts
        assert self.plugin.proc is not None
        self.rss_marks["after_load_mb"] = read_status(self.plugin.proc.pid)[0]
        self.log(f"models loaded; RSS {self.rss_marks['after_load_mb']:.0f} MB")

    def run(self) -> dict[str, Any]:
        try:
            self.start()
            plan = Plan(self.requests, self.config.requests, self.config.seed, self.config.seconds)
            self.results.clear()
            run_started = time.monotonic()
            sampler = threading.Thread(target=self.sample_rss, daemon=True)
            sampler.start()
            callers = [threading.Thread(target=self.caller, args=(plan,)) for _ in range(self.config.concurrency)]
            fault_thread = threading.Thread(target=self.faults, args=(plan,))
            for thread in [*callers, fault_thread]:
                thread.start()
            last_report = time.monotonic()
            while any(t.is_alive() for t in callers):
                for thread in callers:
                    thread.join(0.5)
                if time.monotonic() - last_report > 10:
                    last_report = time.monotonic()
                    self.log(f"{len(self.results)} completed, {plan.issued}/{plan.total} issued")
            self.main_done.set()
            fault_thread.join()
            run_ended = time.monotonic()
            assert self.plugin.proc is not None
            self.rss_marks["after_last_mb"] = read_status(self.plugin.proc.pid)[0]
            time.sleep(1.5)  # anything arriving now is a duplicate (or a late answer to a lost request)
            self.stop_sampling.set()
            sampler.join()
            return self.report(plan, run_started, run_ended)
        finally:
            self.plugin.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def report(self, plan: Plan, run_started: float, run_ended: float) -> dict[str, Any]:
        config, results, plugin = self.config, self.results, self.plugin
        alive = plugin.proc is not None and plugin.proc.poll() is None
        lost_sessions = {r.session for r in results if r.outcome == "lost"}
        duplicated: list[dict[str, Any]] = []
        late = 0
        with plugin._lock:
            sessions = dict(plugin._sessions)
        for session, records in sessions.items():
            extra = []
            while not records.empty():
                extra.append(records.get_nowait())
            if not extra:
                continue
            if session in lost_sessions:
                late += 1
            elif session in self.sent:
                kind = next((r.kind for r in results if r.session == session), "?")
                duplicated.append({"kind": kind, "session": session, "extra": [str(e)[:200] for e in extra[:3]]})
            else:
                duplicated.append({"kind": "unsolicited", "session": session, "extra": [str(e)[:200] for e in extra]})
        verdicts = Counter(r.verdict for r in results)
        by_class = Counter(r.outcome for r in results if r.outcome not in (OK, "lost", "protocol", "bad_result"))
        by_kind: dict[str, Any] = {}
        groups: dict[str, list[Result]] = defaultdict(list)
        for r in results:
            groups[r.kind].append(r)
        for kind, group in sorted(groups.items()):
            by_kind[kind] = {
                "sent": len(group),
                "outcomes": dict(Counter(r.outcome for r in group)),
                "expected": group[0].expect,
                "latency_ms": percentiles([r.latency_ms for r in group]),
            }
            if kind == "chat":
                by_kind[kind]["ttft_ms"] = percentiles([r.ttft_ms for r in group if r.ttft_ms is not None])
        busy_latency = [r.latency_ms for r in results if r.outcome == BUSY]
        failures_list = [r for r in results if r.verdict not in ("pass", "sdk")]
        examples = [
            {
                "kind": r.kind,
                "request": r.describe,
                "verdict": r.verdict,
                "outcome": r.outcome,
                "expected": r.expect,
                "message": r.message[:300],
            }
            for r in failures_list[:30]
        ]
        sdk: dict[str, dict[str, Any]] = {}
        for r in results:
            if r.verdict == "sdk":
                entry = sdk.setdefault(r.kind, {"request": r.describe, "expected": r.expect, "got": Counter()})
                entry["got"][r.outcome] += 1
        for entry in sdk.values():
            entry["got"] = dict(entry["got"])
        beats = plugin.heartbeats
        gaps = [b - a for a, b in itertools.pairwise(beats)]
        worst = max(itertools.pairwise(beats), key=lambda pair: pair[1] - pair[0], default=None)
        in_flight: Counter[str] = Counter()
        if worst is not None:  # what was being answered while the plugin sent no heartbeat
            start, end = worst[0] - self.t0, worst[1] - self.t0
            for r in results:
                if r.sent_at < end and r.sent_at + r.latency_ms / 1000 > start:
                    in_flight[r.kind] += 1
        run_beats = [run_started, *[b for b in beats if run_started <= b <= run_ended], run_ended]
        run_gaps = [b - a for a, b in itertools.pairwise(run_beats)]
        stray_json, stray_text = [], []
        for line in plugin.stray:
            try:
                stray_json.append(json.loads(line))
            except ValueError:
                stray_text.append(line)
        rss_first = self.rss_marks.get("after_first_mb")
        rss_last = self.rss_marks.get("after_last_mb")
        warnings = Counter(
            str(entry.get("message", ""))[:90] for entry in plugin.logs if entry.get("level") in ("WARNING", "ERROR")
        )
        report: dict[str, Any] = {
            "models": config.models.name,
            "machine": f"{cpu_model()}, {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs allowed",
            "load_average_before": self.load_average,
            "settings": {
                "requests": config.requests,
                "concurrency": config.concurrency,
                "seconds_cap": config.seconds,
                "timeout_s": config.timeout,
                "seed": config.seed,
                "strict": config.strict,
                "first_mark": config.first_mark,
                "mix": {**config.mix.__dict__, "weights": config.mix.weights},
                "main_model_settings": config.models.settings or "defaults (every field empty)",
            },
            "loads": self.loads,
            "duration_s": round(run_ended - run_started, 1),
            "requests": {
                "sent": len(self.sent),
                "completed": sum(1 for r in results if r.outcome != "lost"),
                "lost": verdicts["lost"],
                "duplicated": len(duplicated),
                "late_after_lost": late,
                "protocol_violations": verdicts["protocol"],
                "bad_results": verdicts["bad_result"],
                "misclassed": verdicts["misclassed"],
                "sdk_deviations": verdicts["sdk"],
                "ok": sum(1 for r in results if r.outcome == OK),
                "errors": sum(by_class.values()),
                "per_second": round(len(results) / max(1e-9, run_ended - run_started), 1),
                "callers_issued": plan.issued,
            },
            "errors_by_class": dict(by_class.most_common()),
            "failures": examples,
            "duplicates": duplicated[:20],
            "sdk_deviations": sdk,
            "busy_errors": {"latency_ms": percentiles(busy_latency), "limit_p99_ms": config.busy_p99_limit_ms},
            "by_kind": by_kind,
            "heartbeats": {
                "interval_s": float(plugin.env.get("HEARTBEAT_INTERVAL", "0.5")),
                "count": len(beats),
                "max_gap_s": round(max(gaps, default=0.0), 3),
                "max_gap_during_run_s": round(max(run_gaps, default=0.0), 3),
                "p99_gap_s": round(percentiles(gaps).get("p99", 0.0), 3),
                "max_gap_window_s": [round(t - self.t0, 2) for t in worst] if worst else None,
                "in_flight_during_max_gap": dict(in_flight.most_common()),
            },
            "rss_mb": {
                "after_load": round(self.rss_marks.get("after_load_mb", 0.0), 1),
                "after_first": round(rss_first, 1) if rss_first else None,  # after settings.first_mark requests
                "after_last": round(rss_last, 1) if rss_last else None,
                "last_vs_first": round(rss_last / rss_first, 3) if rss_first and rss_last else None,
                "peak": max((s[1] for s in self.rss), default=None),
                "threads_first_last": [self.rss[0][2], self.rss[-1][2]] if self.rss else None,
                "samples": [list(s) for s in self.rss],
            },
            "events": self.events,
            "fault_requests": [  # every request that is not normal traffic, in the order sent
                [round(r.sent_at, 2), r.kind, r.outcome, round(r.latency_ms, 1)]
                for r in sorted(results, key=lambda r: r.sent_at)
                if r.kind not in NORMAL_KINDS
            ],
            "stdout": {
                "garbage_lines_sent": self.garbage_lines,
                "non_protocol_lines": stray_text[:10],
                "other_records": dict(Counter(str(r.get("event")) for r in stray_json)),
            },
            "plugin_warnings": dict(warnings.most_common(15)),
            "plugin_alive_at_end": alive,
        }
        failures = []
        for key in ("lost", "duplicated", "protocol_violations", "bad_results", "misclassed"):
            if report["requests"][key]:
                failures.append(f"{report['requests'][key]} {key.replace('_', ' ')}")
        if report["heartbeats"]["max_gap_s"] >= HEARTBEAT_GAP_LIMIT_S:
            failures.append(f"heartbeat gap {report['heartbeats']['max_gap_s']} s")
        if busy_latency and percentiles(busy_latency)["p99"] > config.busy_p99_limit_ms:
            failures.append(f"busy errors p99 {percentiles(busy_latency)['p99']} ms")
        if stray_text:
            failures.append(f"{len(stray_text)} non-protocol stdout lines")
        if not alive:
            failures.append("the plugin process died")
        report["passed"] = not failures
        report["failures_summary"] = failures
        return report


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def run_soak(config: SoakConfig) -> dict[str, Any]:
    """One soak run: start the plugin, load the models, drive it, stop it; returns the report (see `summary`)."""
    return Soak(config).run()


def summary(report: dict[str, Any]) -> str:
    req, hb, rss = report["requests"], report["heartbeats"], report["rss_mb"]
    lines = [
        f"{report['models']} models, {report['settings']['concurrency']} callers, {report['duration_s']} s: "
        f"sent {req['sent']}, completed {req['completed']}, lost {req['lost']}, duplicated {req['duplicated']}, "
        f"misclassed {req['misclassed']}, protocol {req['protocol_violations']}, bad results {req['bad_results']}, "
        f"SDK deviations {req['sdk_deviations']} ({req['per_second']} req/s)",
        f"errors by class: {report['errors_by_class']}",
        f"busy errors: {report['busy_errors']['latency_ms']}",
        f"heartbeat max gap {hb['max_gap_s']} s (during the run {hb['max_gap_during_run_s']} s) at "
        f"{hb['max_gap_window_s']} s, faults in flight: "
        f"{ {k: n for k, n in hb['in_flight_during_max_gap'].items() if k not in NORMAL_KINDS} }",
        f"RSS: after load {rss['after_load']} MB, after the first {report['settings']['first_mark']} requests "
        f"{rss['after_first']} MB, after the last {rss['after_last']} MB "
        f"(×{rss['last_vs_first']}), peak {rss['peak']} MB, threads {rss['threads_first_last']}",
    ]
    for kind, entry in report["by_kind"].items():
        latency = entry["latency_ms"]
        lines.append(
            f"  {kind:32s} {entry['sent']:5d}  p50 {latency.get('p50', 0):8.1f}  p99 {latency.get('p99', 0):8.1f}  "
            f"max {latency.get('max', 0):8.1f} ms  {entry['outcomes']}"
        )
    for name, entry in report["sdk_deviations"].items():
        lines.append(f"  SDK deviation: {name} ({entry['request']}) → {entry['got']}, expected {entry['expected']}")
    for failure in report["failures"][:10]:
        lines.append(f"  FAILURE {failure}")
    lines.append("PASSED" if report["passed"] else f"FAILED: {'; '.join(report['failures_summary'])}")
    return "\n".join(lines)


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["rss_mb"]["samples"]
    fig, axis = plt.subplots(figsize=(8, 3.2))
    if samples:
        times = [s[0] for s in samples]
        axis.plot(times, [s[1] for s in samples], color="#2a7", label="RSS (MB)")
        done = axis.twinx()
        done.plot(times, [s[3] for s in samples], color="#888", linestyle=":", label="requests completed")
        done.set_ylabel("requests completed", fontsize=8)
        top = max(s[1] for s in samples)
        for event in report["events"]:
            axis.axvline(event["t"], color="#c55", alpha=0.3, linewidth=0.8)
            label = event["label"]
            axis.text(event["t"], top, label, rotation=90, fontsize=5, va="top", ha="right", color="#a33")
        mark = report["settings"]["first_mark"]
        crossing = next((s[0] for s in samples if s[3] >= mark), None)
        if crossing is not None:
            axis.axvline(crossing, color="k", linestyle="--", linewidth=0.8)
            axis.text(crossing, top * 0.55, f"{mark} done", rotation=90, fontsize=6, va="top", ha="right")
    axis.set_xlabel("seconds")
    axis.set_ylabel("plugin RSS (MB)")
    req = report["requests"]
    axis.set_title(
        f"make soak, {report['models']} models: {req['sent']} requests, lost {req['lost']}, "
        f"duplicated {req['duplicated']}, misclassed {req['misclassed']} (red: injected faults)",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", choices=sorted(MODEL_SETS), default="real")
    parser.add_argument("--requests", type=int, default=5000, help="requests from the callers (faults included)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=None, help="stop issuing requests after this long")
    parser.add_argument("--timeout", type=float, default=120.0, help="a request with no end by then is lost")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--light", action="store_true", help="small batches and short chats (the make test mix)")
    parser.add_argument("--strict", action="store_true", help="SDK deviations count as misclassed")
    parser.add_argument("--name", default=None, help="bench/results/<name>.json/.png (default soak, soak-tiny)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a setting for the three main models"
    )
    args = parser.parse_args(argv)
    models = MODEL_SETS[args.models]
    extra = dict(item.split("=", 1) for item in args.set)
    if extra:
        models = dataclasses.replace(models, settings={**models.settings, **extra})
    for directory in (models.embedder, models.reranker, models.llm):
        if not (models.root / directory).is_dir():
            sys.exit(f"soak needs {models.root / directory}: run `make models` first, or pass --models tiny")
    config = SoakConfig(
        models=models,
        requests=args.requests,
        concurrency=args.concurrency,
        seconds=args.seconds,
        timeout=args.timeout,
        seed=args.seed,
        mix=Mix.light() if args.light else Mix(),
        strict=args.strict,
        first_mark=min(1000, max(1, args.requests // 2)),
    )
    report = run_soak(config)
    name = args.name or ("soak" if args.models == "real" else "soak-tiny")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    chart(report, RESULTS / f"{name}.png")
    print(summary(report))
    print(f"wrote {RESULTS / (name + '.json')} and .png")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
