"""tools/convert.py end to end: each supported decoder family's Hugging Face checkpoint in both layouts, and a
base-model GGUF without a chat template, converted and then run through the engine, which must reproduce Hugging
Face `generate` greedy ids (chat mode where there is a template, completion mode always).

Needs the tools envs (.venv-tools, .venv-tools-tf5) and minutes of CPU: `make test-convert`
(ONNX_LOCAL_TEST_CONVERT=1). The refusals, which stop before any heavy work, run in every `make test`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.api import Engine
from engine.errors import ModelLoadError
from engine.generation.events import Finished, GenerationParams
from engine.generation.sampling import SamplingParams
from engine.settings.profile import parse_profile
from engine.text.messages import ChatMessage

REPO = Path(__file__).resolve().parents[2]
TOOLS_PY = REPO / ".venv-tools" / "bin" / "python"
FAMILIES = ("llama", "gemma3", "phi3", "qwen3", "mistral")
SLOW = pytest.mark.skipif(
    os.environ.get("ONNX_LOCAL_TEST_CONVERT") != "1" or not TOOLS_PY.exists(),
    reason="converts real checkpoints with the tools envs (minutes): make test-convert",
)


def convert(source: Path, out: Path, *options: str, python: Path = TOOLS_PY) -> subprocess.CompletedProcess[str]:
    cmd = [str(python), str(REPO / "tools" / "convert.py"), str(source), str(out), *options]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1800)


def write_config(directory: Path, architecture: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"architectures": [architecture]}), encoding="utf-8")
    return directory


@pytest.mark.parametrize(
    ("architecture", "layout", "message"),
    [
        ("Gemma3ForConditionalGeneration", "optimum", "vision-language"),
        ("Phi4MMForCausalLM", "optimum", "speech/vision"),
        ("GPT2LMHeadModel", "genai", "not verified for GPT2LMHeadModel"),
    ],
)
def test_refusals_name_the_architecture_and_the_way_out(
    tmp_path: Path, architecture: str, layout: str, message: str
) -> None:
    # Refused before torch is imported: the plugin's own interpreter can run this far.
    source = write_config(tmp_path / "ckpt", architecture)
    result = convert(source, tmp_path / "out", "--layout", layout, python=Path(sys.executable))
    assert result.returncode != 0
    assert architecture in result.stderr and message in result.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("convert-inputs")
    subprocess.run([str(TOOLS_PY), str(REPO / "tools" / "make_convert_inputs.py"), str(out)], check=True)
    return out


def check_generation(model_dir: Path, reference: dict[str, Any]) -> None:
    engine = Engine()
    try:
        for case in reference["cases"]:
            mode = case.get("mode", "chat")
            values = {"model_path": model_dir.name, "intra_op_threads": "1", "mode": mode}
            profile = parse_profile(values, "llm", roots=(model_dir.parent,))
            messages = [ChatMessage(m["role"], m["content"]) for m in case["messages"]]
            assert engine.registry.get(profile).scheduler.prompts.encode(messages) == case["input_ids"], case["name"]
            params = GenerationParams(SamplingParams(temperature=0.0), max_tokens=len(case["output_ids"]))
            finished = list(engine.generate(profile, messages, params))[-1]
            assert isinstance(finished, Finished)
            assert list(finished.output_ids) == case["output_ids"], (model_dir.name, case["name"])
    finally:
        engine.close()


@SLOW
@pytest.mark.parametrize("layout", ["optimum", "genai"])
@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_conversion_reproduces_hugging_face(inputs: Path, tmp_path: Path, family: str, layout: str) -> None:
    out = tmp_path / f"{family}-{layout}"
    result = convert(inputs / "hf" / family, out, "--layout", layout, "--quantization", "none")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    check_generation(out, json.loads((inputs / "expected" / f"{family}.json").read_text(encoding="utf-8")))


@SLOW
@pytest.mark.parametrize("layout", ["optimum", "genai"])
def test_base_model_gguf_without_a_chat_template(inputs: Path, tmp_path: Path, layout: str) -> None:
    out = tmp_path / f"llama-base-{layout}"
    result = convert(inputs / "llama-base.gguf", out, "--layout", layout, "--quantization", "none")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "mode=completion" in result.stdout + result.stderr
    assert not (out / "chat_template.jinja").exists()
    check_generation(out, json.loads((inputs / "expected" / "llama-base.json").read_text(encoding="utf-8")))
    # Chat mode on a base model is refused at load, naming the setting to change.
    engine = Engine()
    try:
        with pytest.raises(ModelLoadError, match="set mode to completion"):
            engine.model_info(parse_profile({"model_path": out.name, "mode": "chat"}, "llm", roots=(out.parent,)))
    finally:
        engine.close()
