from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.api import Engine

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "models"
ROOTS = (FIXTURES.resolve(),)

os.environ.setdefault("ONNX_LOCAL_MODEL_ROOTS", str(FIXTURES))


def settings(model_path: str, **values: str) -> dict[str, str]:
    """Credential values as Dify sends them (strings), with one thread so tests fit on two cores."""
    return {"model_path": model_path, "intra_op_threads": "1", "cpu_affinity": "none", **values}


@pytest.fixture()
def engine() -> Iterator[Engine]:
    instance = Engine()
    yield instance
    instance.close()
