"""Structured output on the real Qwen2.5-Coder-0.5B-Instruct (genai int4) through the plugin process over the daemon
protocol: 50 sampled generations with a JSON schema (nested objects, arrays, enums, required fields) all parse and
validate. Runs with `make test-real` (ONNX_LOCAL_REAL_MODELS=.models), ~2 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from tests.plugin.daemon import REPO, PluginProcess, model_request, streams
from tests.plugin.test_structured_protocol import PERSON

REAL = os.environ.get("ONNX_LOCAL_REAL_MODELS")
pytestmark = pytest.mark.skipif(not REAL, reason="set ONNX_LOCAL_REAL_MODELS=.models to run the real-model checks")
NAME = "qwen2.5-coder-0.5b-instruct-genai"
CREDENTIALS = {"model_path": NAME, "intra_op_threads": "2", "cpu_affinity": "none"}
PEOPLE = ["a retired sailor", "a chemistry student", "a baker in Lyon", "a software tester", "a marathon runner"]


@pytest.fixture(scope="module")
def plugin() -> Iterator[PluginProcess]:
    root = Path(REAL or ".").resolve()
    if not (root / NAME / ".build-complete.json").is_file():
        pytest.skip(f"{root / NAME} is not built; run `make models`")
    process = PluginProcess(sys.executable, REPO, env={"ONNX_LOCAL_MODEL_ROOTS": str(root)})
    process.start()
    yield process
    process.close()


def test_fifty_sampled_generations_parse_and_validate_on_qwen(plugin: PluginProcess) -> None:
    answers = []
    for seed in range(50):
        records = plugin.request(
            model_request(
                "invoke_llm",
                "llm",
                NAME,
                CREDENTIALS,
                prompt_messages=[{"role": "user", "content": f"Describe {PEOPLE[seed % len(PEOPLE)]}."}],
                model_parameters={
                    "temperature": 0.8,
                    "seed": seed,
                    "max_tokens": 256,
                    "response_format": "json_schema",
                    "json_schema": json.dumps({"name": "person", "schema": PERSON}),
                },
                stop=None,
                tools=None,
                stream=True,
            ),
            timeout=300,
        )
        text = "".join(chunk["delta"]["message"]["content"] for chunk in streams(records))
        value = json.loads(text)
        jsonschema.validate(value, PERSON)
        answers.append(value)
    print(f"\n50/50 valid; e.g. {json.dumps(answers[0])[:300]}")
    assert len({json.dumps(a, sort_keys=True) for a in answers}) > 1  # sampled, not one fixed answer
