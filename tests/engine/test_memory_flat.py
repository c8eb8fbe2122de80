"""After a batch of long texts, the encoder's ONNX Runtime arena gives its memory back instead of keeping the
high-water mark for good (measured in fresh processes, with the shrink on and off)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = """
import json, sys, psutil
from engine.api import Engine
from engine.encoders import runner
from engine.settings.profile import parse_profile
from tests.conftest import ROOTS, settings
if sys.argv[1] == "off":
    runner.SHRINK_AREA = 1 << 62
engine = Engine()
process = psutil.Process()
values = {"max_batch_size": "64", "max_batch_tokens": "100000", "context_size": "512"}
profile = parse_profile(settings("tiny-bert-embedder", **values), "text-embedding", roots=ROOTS)
engine.embed(profile, ["warm up"])
base = process.memory_info().rss
engine.embed(profile, ["word " * 600] * 64)
engine.embed(profile, ["short text"] * 8)
print(json.dumps({"growth": process.memory_info().rss - base}))
engine.close()
"""


def growth(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    return int(json.loads(done.stdout.strip().splitlines()[-1])["growth"])


def test_a_large_batch_does_not_keep_its_arena_memory() -> None:
    kept_without, kept_with = growth("off"), growth("on")
    assert kept_with < 0.6 * kept_without, (kept_with, kept_without)
