"""The command line (`python -m engine …`) on the tiny fixtures, run as a user runs it: a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import SettingError
from engine.settings.profile import parse_profile
from tests.conftest import FIXTURES, REPO

DECODER = FIXTURES / "tiny-qwen2-decoder"
GENAI = FIXTURES / "tiny-qwen2-decoder-genai"
EMBEDDER = FIXTURES / "tiny-bert-embedder"
RERANKER = FIXTURES / "tiny-cross-encoder"
ONE_THREAD = ("--intra_op_threads", "1")


def engine_cli(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "ONNX_LOCAL_MODEL_ROOTS"}  # DIR is a root itself
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=REPO,
        env={**environment, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )


def ok(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    done = engine_cli(*args, stdin=stdin)
    assert done.returncode == 0, done.stderr
    return done


def fields(text: str) -> dict[str, str]:
    """`name  value` rows of the text output."""
    rows = {}
    for line in text.splitlines():
        name, _, value = line.partition("  ")
        if name and not name.startswith(" ") and value:
            rows[name.strip()] = value.strip()
    return rows


@pytest.mark.parametrize(
    ("model", "model_type", "layout", "chosen"),
    [
        (DECODER, "llm", "optimum", "model.onnx"),
        (GENAI, "llm", "genai", "model.onnx"),
        (EMBEDDER, "text-embedding", "optimum", "model.onnx"),
        (RERANKER, "rerank", "optimum", "onnx/model.onnx"),
    ],
)
def test_inspect(model: Path, model_type: str, layout: str, chosen: str) -> None:
    text = ok("inspect", str(model), *ONE_THREAD).stdout
    rows = fields(text)
    assert rows["model type"] == model_type
    assert rows["layout"].startswith(layout)
    assert f"{chosen}" in text and "← chosen (auto)" in text
    assert rows["tokenizer"].startswith(("BPE", "WordPiece"))
    assert rows["context"].startswith(("512 tokens", "128 tokens"))
    assert rows["loaded"].startswith(chosen)
    if model_type == "llm":
        assert rows["chat template"] == "chat_template.jinja; tools: yes; reasoning: no"
        assert rows["KV cache"].startswith(f"{layout} layout: 2 layers × 2 KV heads × 16, float32, 0.5 KB per token")
        assert "eos ids [0, 2]" in rows["generation"]
    if model_type == "text-embedding":
        assert rows["pooling"] == "mean, normalized" and rows["dimension"] == "64"
    if model == GENAI:
        assert rows["external data"] == "model.onnx.data"
        assert "model_int4.onnx" in text  # listed, not chosen: genai_config.json names model.onnx


def test_inspect_json_and_template_features(tmp_path: Path) -> None:
    facts = json.loads(ok("inspect", str(GENAI), "--json", *ONE_THREAD).stdout)
    assert facts["kv_cache"]["layers"] == 2 and facts["kv_cache"]["bytes_per_token"] == 2 * 2 * 2 * 16 * 4
    assert facts["template"] == {
        "present": True,
        "source": "chat_template.jinja",
        "tools": True,
        "tool_use_variant": False,
        "reasoning": False,
    }
    thinking = tmp_path / "thinking"
    shutil.copytree(DECODER, thinking)
    template = (thinking / "chat_template.jinja").read_text()
    (thinking / "chat_template.jinja").write_text(template + "{%- if false %}<think>\n{% endif %}")
    facts = json.loads(ok("inspect", str(thinking), "--json", "--no-load").stdout)
    assert facts["template"]["reasoning"] is True and "loaded" not in facts


def test_chat_streams_the_answer_and_prints_timings() -> None:
    done = ok("chat", str(DECODER), "Hello", "there", "--max-tokens", "12", *ONE_THREAD)
    assert done.stdout.strip()  # the answer (random weights: any text)
    assert "12 generated; time to first token" in done.stderr and "tokens/s decode" in done.stderr
    assert "finish: length" in done.stderr
    piped = ok("chat", str(GENAI), "--max-tokens", "6", "--temperature", "0.7", "--seed", "1", stdin="hi from stdin")
    assert "6 generated" in piped.stderr


def test_chat_with_a_json_schema_answers_valid_json_and_refuses_an_unenforceable_one(tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "sky": {"enum": ["clear", "rain"]}},
        "required": ["city", "sky"],
    }
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    args = ("--temperature", "1", "--seed", "3", "--max-tokens", "40", *ONE_THREAD)
    done = ok("chat", str(DECODER), "Weather?", "--json-schema", str(tmp_path / "schema.json"), *args)
    assert json.loads(done.stdout)["sky"] in ("clear", "rain")
    (tmp_path / "bad.json").write_text('{"not": {}}')
    refused = engine_cli("chat", str(DECODER), "x", "--json-schema", str(tmp_path / "bad.json"), *ONE_THREAD)
    assert refused.returncode != 0 and '["not"]' in refused.stderr


def test_embed_reports_dimension_norms_and_cosines() -> None:
    done = ok("embed", str(EMBEDDER), "the cat sat", "a cat was sitting", "stock markets fell", *ONE_THREAD)
    rows = fields(done.stdout)
    assert rows["dimension"].startswith("64 (pooling mean, normalized)")
    assert done.stdout.count("norm 1.0000") == 3
    assert "cosine" in done.stdout
    result = json.loads(
        ok("embed", str(EMBEDDER), "one", "two", "--json", "--query", "--normalize", "false", *ONE_THREAD).stdout
    )
    assert result["dimension"] == 64 and result["input_type"] == "query"
    assert [round(row[i], 4) for i, row in enumerate(result["cosine"])] == [1.0, 1.0]
    assert any(abs(norm - 1.0) > 1e-3 for norm in result["norms"])  # normalize=false, as the form's setting says


def test_rerank_orders_documents() -> None:
    done = ok("rerank", str(RERANKER), "what is a cat", "a cat is an animal", "markets fell", "cats purr", *ONE_THREAD)
    assert "rank" in done.stdout and done.stdout.count("[") >= 3
    result = json.loads(ok("rerank", str(RERANKER), "q", "a", "b", "c", "--json", "--top-n", "2", *ONE_THREAD).stdout)
    scores = [hit["score"] for hit in result["hits"]]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True)


def test_rerank_command_scores_with_an_llm_reranker() -> None:
    """A decoder directory given to `rerank` is an LLM-style reranker (files alone cannot tell it from a chat model)."""
    reranker = FIXTURES / "tiny-qwen3-reranker"
    done = ok("rerank", str(reranker), "weather in Paris", "Il fait beau", "def f(): pass", "--json", *ONE_THREAD)
    result = json.loads(done.stdout)
    assert len(result["hits"]) == 2 and all(0.0 < hit["score"] < 1.0 for hit in result["hits"])


def test_bench_llm_and_encoder() -> None:
    llm = json.loads(ok("bench", str(GENAI), "--runs", "1", "--max-tokens", "16", "--json", *ONE_THREAD).stdout)
    assert llm["kind"] == "llm" and llm["runs"][0]["completion_tokens"] == 16
    assert llm["median"]["decode_tokens_per_second"] > 0 and llm["runs"][0]["ttft_ms"] > 0
    text = ok("bench", str(EMBEDDER), "--runs", "1", "--texts", "32", *ONE_THREAD).stdout
    assert "texts/s" in text and "tokens/s" in text and "(4 callers × 8 texts)" in text
    rerank = ok("bench", str(RERANKER), "--runs", "1", "--texts", "16", "--json", "--set", "max_batch_size=4")
    assert json.loads(rerank.stdout)["median"]["texts_per_second"] > 0


def test_placement() -> None:
    text = ok("placement").stdout
    rows = fields(text)
    for name in ("online CPUs", "allowed CPUs", "NUMA nodes", "cgroup CPU quota", "usable cores", "one model"):
        assert name in rows
    assert "chat [llm] → cores" in rows["two busy models"]
    result = json.loads(ok("placement", "--json").stdout)
    usable = result["usable_cores"]
    one, two = result["one_model"], result["two_busy_models"]
    assert one["threads"] == usable and one["spinning"] is False
    if usable >= 2:  # two busy models never share a core when there are enough
        assert set(two["chat [llm]"].split(",")).isdisjoint(two["embedder [text-embedding]"].split(","))
    explicit = json.loads(ok("placement", "--json", "--set", "cpu_affinity=0", "--intra-op-threads", "1").stdout)
    assert explicit["one_model"] == {"cores": "0", "threads": 1, "spinning": True}


def test_settings_are_checked_as_the_form_checks_them() -> None:
    bad = engine_cli("inspect", str(EMBEDDER), "--set", "pooling=median", "--no-load")
    assert bad.returncode == 1
    with pytest.raises(SettingError) as form:
        parse_profile({"model_path": str(EMBEDDER), "pooling": "median"}, "text-embedding", roots=(EMBEDDER,))
    assert bad.stderr.strip() == f"error: {form.value}"  # the same message Dify shows
    assert "cpu_affinity" in engine_cli("placement", "--cpu_affinity", "0-x").stderr
    unknown = engine_cli("inspect", str(EMBEDDER), "--set", "bogus=1")
    assert unknown.returncode == 2 and "bogus is not a setting" in unknown.stderr
    wrong_kind = engine_cli("chat", str(EMBEDDER), "hi")
    assert wrong_kind.returncode == 2 and "is a text-embedding model" in wrong_kind.stderr
