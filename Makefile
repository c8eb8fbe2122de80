# onnx_local — newcomer entry points: make setup, make test, make demo, make package.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo package package-offline bench-embed bench-grammar bench-structured stats help

help:
	@echo "make setup        create .venv (Python 3.12) with runtime + dev dependencies"
	@echo "make test         fast test suite on tiny synthetic models"
	@echo "make lint         ruff"
	@echo "make demo         real models (built if missing), streamed chat, embedding and rerank over the daemon protocol"
	@echo "make package      dist/onnx_local-<version>.difypkg"
	@echo "make package-offline  dist/onnx_local-<version>-offline.difypkg with every wheel (Linux x86_64 + aarch64), installs air-gapped; OFFLINE_PLATFORM=x86_64|aarch64 for one"
	@echo "make models       build the real models into .models/ (offline, minutes)"
	@echo "make test-real    fidelity checks against .models/"
	@echo "make bench-embed  embedding/rerank batching benchmark (JSON + PNG in bench/results/)"
	@echo "make bench-llm    LLM decode/TTFT benchmark: engine, plugin, bare ONNX Runtime, llama.cpp"
	@echo "make bench-llm-env  build llama.cpp (llama-cpp-python from source) for bench-llm, ~11 min"
	@echo "make bench-sampling  per-token cost of the sampler on a Qwen-sized vocabulary (no model needed)"
	@echo "make bench-grammar   per-token mask cost of llguidance vs outlines-core on the real Qwen tokenizer"
	@echo "make bench-structured  decode tokens/s with a JSON-schema constraint vs without (BENCH_STRUCTURED_ARGS=--tiny)"
	@echo "make bench-serving  prefix cache, 1-8 concurrent chats vs a bare static batch, speculative decoding, through the plugin (needs make models)"
	@echo "make bench-coloc  chat LLM + embedder in one plugin process: defaults vs hand-tuned vs naive (needs make models)"
	@echo "make soak         thousands of mixed requests + overload + injected faults through the plugin: lost, duplicated, misclassed, heartbeats, RSS (SOAK_ARGS=\"--models tiny\")"
	@echo "make fixtures-check  rebuild the tiny test models and compare them byte for byte"
	@echo "make test-convert  tools/convert.py on tiny checkpoints of every supported decoder family + a base-model GGUF (minutes)"

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt scripts/find_python312.sh
	@py312=$$(PYTHON312="$(PYTHON312)" scripts/find_python312.sh) || exit 1; \
	  echo "using $$py312"; \
	  if [ ! -x $(PY) ] || ! $(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then \
	    rm -rf $(VENV) && "$$py312" -m venv $(VENV) || exit 1; fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check engine models provider main.py

package: setup
	$(PY) scripts/package.py

OFFLINE_PLATFORM ?= both
package-offline: setup
	$(PY) scripts/package_offline.py --platform $(OFFLINE_PLATFORM)

demo: setup
	$(PY) scripts/demo.py

bench-embed: setup
	$(PY) bench/embed.py $(BENCH_ARGS)

bench-grammar: setup
	$(PY) bench/grammar.py --json bench/results/grammar.json

BENCH_STRUCTURED_ARGS ?=
bench-structured: setup
	$(PY) bench/structured.py --json bench/results/structured.json $(BENCH_STRUCTURED_ARGS)

-include tools/tools.mk
-include tools/models.mk
-include bench/llm.mk
