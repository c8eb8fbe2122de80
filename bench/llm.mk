# LLM decode benchmark (included by the top Makefile): engine vs a bare ONNX Runtime greedy loop on the real
# Qwen models in .models/ (build them with `make models`). JSON + PNG in bench/results/.
#   make bench-llm                         both layouts, 1 and 2 threads, ~40- and ~500-token prompts
#   make bench-llm BENCH_LLM_ARGS=--tiny   a seconds-long smoke run on the test fixtures

BENCH_LLM_ARGS ?=

.PHONY: bench-llm

bench-llm: setup
	$(PY) bench/llm.py $(BENCH_LLM_ARGS)
