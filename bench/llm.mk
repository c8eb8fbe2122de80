# LLM benchmark (included by the top Makefile after tools/tools.mk): on the real Qwen models in .models/
# (`make models`), per layout x threads x prompt: a bare ONNX Runtime greedy loop, the engine, the plugin
# over the daemon protocol, and llama.cpp on the same model's GGUF. JSON + PNG in bench/results/.
#   make bench-llm                         full run (~25 min on 2 cores; builds .venv-llamacpp first)
#   make bench-llm BENCH_LLM_ARGS=--tiny   a seconds-long smoke run on the test fixtures (no llama.cpp)
#   make bench-llm-env                     only build the llama.cpp env (compiles from source, ~15 min)
#   make bench-sampling                    per-token cost of the sampler (no model needed)

BENCH_LLM_ARGS  ?=
LLAMACPP_VENV   := .venv-llamacpp
LLAMACPP_PY     := $(LLAMACPP_VENV)/bin/python
LLAMACPP_STAMP  := $(LLAMACPP_VENV)/.installed-stamp
LLAMACPP_REQS   := tools/requirements-llamacpp.txt
# CPU only, tuned for this CPU (GGML_NATIVE -> -march=native); no GPU backends, no curl, and no multimodal
# library (LLAVA_BUILD: llama-cpp-python imports it only for image chat handlers).
LLAMACPP_CMAKE_ARGS ?= -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF \
	-DGGML_HIP=OFF -DGGML_OPENMP=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAVA_BUILD=OFF

.PHONY: bench-llm bench-llm-env bench-sampling

bench-llm-env: $(LLAMACPP_STAMP)

# --no-binary: always compile from the PyPI sdist, never a prebuilt wheel (native flags must apply).
$(LLAMACPP_STAMP): $(LLAMACPP_REQS)
	@if [ -z "$(PYTHON311)" ]; then echo "ERROR: Python 3.11 not found; set PYTHON311=/path/to/python3.11" >&2; exit 1; fi
	@[ -x $(LLAMACPP_PY) ] || $(PYTHON311) -m venv $(LLAMACPP_VENV)
	$(LLAMACPP_PY) -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) FORCE_CMAKE=1 \
		$(LLAMACPP_PY) -m pip install --no-cache-dir --no-binary llama-cpp-python -r $(LLAMACPP_REQS)
	@touch $@

# --tiny needs no llama.cpp env; the full run builds it first.
bench-llm: setup
	@if [[ " $(BENCH_LLM_ARGS) " != *" --tiny "* ]]; then $(MAKE) --no-print-directory bench-llm-env; fi
	$(PY) bench/llm.py --llamacpp-python $(LLAMACPP_PY) $(BENCH_LLM_ARGS)
	@# Structured output: decode rate with a JSON-schema constraint vs without (bench/structured.py).
	$(PY) bench/structured.py --json bench/results/structured.json $(filter --tiny,$(BENCH_LLM_ARGS))

# Per-token cost of the sampler on a Qwen-sized vocabulary (seconds; no model needed).
bench-sampling: setup
	$(PY) bench/sampling.py

# Co-location: a chat LLM and an embedder in one plugin process (needs `make models`): defaults, hand-tuned and
# naive settings side by side, each model alone and both busy. JSON + PNG in bench/results/coloc.*
BENCH_COLOC_ARGS ?=
.PHONY: bench-coloc
bench-coloc: setup
	$(PY) bench/coloc.py $(BENCH_COLOC_ARGS)

# Soak (bench/soak.py): thousands of mixed requests (documents, queries, rerank, short chats, token counts) at 64
# concurrency through the plugin process, with overload bursts and injected faults; reports lost / duplicated /
# misclassed requests, heartbeat gaps, latency per kind and RSS over time (JSON + PNG in bench/results/soak.*).
# Real models by default (`make models`); SOAK_ARGS="--models tiny" runs on the test fixtures, "--seconds 170" caps it.
SOAK_ARGS ?=
.PHONY: soak
soak: setup
	$(PY) bench/soak.py $(SOAK_ARGS)

# Serving (bench/serving.py, needs `make models`): multi-turn time to first token with and without the prefix
# cache, 1/2/4/8 concurrent chats (together and 0.2 s apart) next to a bare static batch of 8, speculative
# decoding on/off on a quoting and a free-writing prompt; all through the plugin process. JSON + PNG in
# bench/results/serving.*; BENCH_SERVING_ARGS=--tiny for a smoke run on the fixtures.
BENCH_SERVING_ARGS ?=
.PHONY: bench-serving
bench-serving: setup
	$(PY) bench/serving.py $(BENCH_SERVING_ARGS)
