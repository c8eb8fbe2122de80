"""Runs `python -m onnxruntime_genai.models.builder` under transformers 4.57.

onnxruntime-genai 0.18.0's builder imports a few transformers-5-only classes at
module level (used only for other architectures); placeholders let it import.
"""

import runpy
import sys

import transformers

for name in ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration"):
    if not hasattr(transformers, name):
        setattr(transformers, name, type(name, (), {}))

sys.argv = ["onnxruntime_genai.models.builder", *sys.argv[1:]]
runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
