# Tooling targets for the synthetic test models (included by the top Makefile).
# The tools venv is Python 3.11 (CPU torch wheel exists for 3.11 only) and is
# never a plugin runtime dependency.

TOOLS_VENV     := .venv-tools
TOOLS_PY       := $(TOOLS_VENV)/bin/python
TOOLS_STAMP    := $(TOOLS_VENV)/.installed-stamp
TOOLS_REQS     := tools/requirements.txt tools/constraints.txt
FIXTURES_DIR   := tests/fixtures/models
TORCH_PIN      := torch==2.13.0

# python3.11 from PATH if it really runs, else the newest pyenv 3.11.x.
PYTHON311 ?= $(shell \
	if python3.11 -c 'import sys; assert sys.version_info[:2] == (3, 11)' >/dev/null 2>&1; then \
		command -v python3.11; \
	elif command -v pyenv >/dev/null 2>&1; then \
		ls -d "$$(pyenv root)"/versions/3.11.*/bin/python3.11 2>/dev/null | sort -V | tail -n 1; \
	fi)

.PHONY: tools-env fixtures fixtures-check test-convert

tools-env: $(TOOLS_STAMP)

$(TOOLS_STAMP): $(TOOLS_REQS)
	@if [ -z "$(PYTHON311)" ]; then \
		echo "ERROR: Python 3.11 not found (python3.11 on PATH or pyenv versions/3.11.*); set PYTHON311=/path/to/python3.11" >&2; \
		exit 1; \
	fi
	@[ -x $(TOOLS_PY) ] || $(PYTHON311) -m venv $(TOOLS_VENV)
	$(TOOLS_PY) -m pip install --quiet --upgrade pip
	# torch first, CPU build, so nothing below can pull a CUDA torch.
	$(TOOLS_PY) -m pip install --quiet $(TORCH_PIN)
	$(TOOLS_PY) -m pip install --quiet -c tools/constraints.txt -r tools/requirements.txt
	@touch $@

fixtures: $(TOOLS_STAMP)
	$(TOOLS_PY) tools/make_test_models.py --out $(FIXTURES_DIR)

# Rebuilds into a temp dir and compares every file's sha256 with the committed tree.
fixtures-check: $(TOOLS_STAMP)
	$(TOOLS_PY) tools/make_test_models.py --out $(FIXTURES_DIR) --check

# tools/convert.py end to end: a tiny checkpoint of every supported decoder family in both layouts and a base-model
# GGUF, converted and checked through the engine against Hugging Face generate (minutes; needs .venv-tools-tf5 too).
test-convert: $(TOOLS_STAMP)
	ONNX_LOCAL_TEST_CONVERT=1 .venv/bin/python -m pytest tests/tools -v -rs
