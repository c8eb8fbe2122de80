"""Every request ends exactly once, whatever it holds: invalid Unicode gets an answer, not silence."""

from __future__ import annotations

import json
import uuid

from tests.plugin.daemon import PluginProcess, model_request, streams

EMBEDDER = {"model_path": "tiny-bert-embedder", "intra_op_threads": "1", "cpu_affinity": "none"}


def test_lone_surrogate_escape_is_answered(plugin: PluginProcess) -> None:
    request = model_request(
        "invoke_text_embedding", "text-embedding", "emb", EMBEDDER, texts=["ok \ud800 bad"], input_type="document"
    )
    (payload,) = streams(plugin.request(request, timeout=30))
    assert len(payload["embeddings"]) == 1


def test_invalid_utf8_bytes_are_answered(plugin: PluginProcess) -> None:
    session = uuid.uuid4().hex
    data = model_request("invoke_text_embedding", "text-embedding", "emb", EMBEDDER, texts=["PLACEHOLDER"])
    line = json.dumps({"session_id": session, "event": "request", "data": {**data, "input_type": "document"}})
    raw = line.encode().replace(b"PLACEHOLDER", b"caf\xc3\xa9 \xff\xfe broken") + b"\n"
    assert plugin.proc is not None and plugin.proc.stdin is not None
    plugin._queue(session)
    plugin.proc.stdin.write(raw)
    plugin.proc.stdin.flush()
    (payload,) = streams(plugin.collect(session, timeout=30))
    assert len(payload["embeddings"]) == 1


def test_per_user_rate_limit_answers_rate_limit_errors() -> None:
    import sys

    from tests.conftest import FIXTURES
    from tests.plugin.daemon import REPO, error_of

    env = {"ONNX_LOCAL_MODEL_ROOTS": str(FIXTURES), "ONNX_LOCAL_RATE_LIMIT": "0.2", "ONNX_LOCAL_RATE_BURST": "2"}
    limited = PluginProcess(sys.executable, REPO, env=env)
    limited.start()
    try:

        def embed_as(user: str) -> list[dict]:
            request = model_request("invoke_text_embedding", "text-embedding", "emb", EMBEDDER, texts=["hi"])
            return limited.request({**request, "user_id": user, "input_type": "document"}, timeout=30)

        assert streams(embed_as("alice")) and streams(embed_as("alice"))
        error = error_of(embed_as("alice"))
        assert error["error_type"] == "InvokeRateLimitError" and "per user" in error["message"]
        assert streams(embed_as("bob"))
    finally:
        limited.close()


def test_an_unknown_action_or_model_type_is_a_clear_bad_request(plugin: PluginProcess) -> None:
    from tests.plugin.daemon import error_of

    unknown = {**model_request("invoke_teleport", "llm", "x", EMBEDDER)}
    error = error_of(plugin.request(unknown, timeout=30))
    assert error["error_type"] == "InvokeBadRequestError" and "invoke_teleport" in error["message"]
    tts = model_request("invoke_tts", "tts", "x", EMBEDDER, content_text="hi", voice="v", tenant_id="t")
    error = error_of(plugin.request(tts, timeout=30))
    assert error["error_type"] == "InvokeBadRequestError" and "'tts' is not served" in error["message"]
    (payload,) = streams(
        plugin.request(
            model_request("invoke_text_embedding", "text-embedding", "e", EMBEDDER, texts=["ok"], input_type="document")
        )
    )
    assert payload["embeddings"]  # the ordinary routes still answer
