from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.conftest import FIXTURES
from tests.plugin.daemon import REPO, PluginProcess


@pytest.fixture(scope="module")
def plugin() -> Iterator[PluginProcess]:
    """The plugin launched as the daemon launches it, with the fixture models as its model root."""
    process = PluginProcess(sys.executable, REPO, env={"ONNX_LOCAL_MODEL_ROOTS": str(FIXTURES)})
    process.start()
    yield process
    process.close()
    assert process.stray == [], f"non-protocol lines on stdout: {process.stray[:5]}"
