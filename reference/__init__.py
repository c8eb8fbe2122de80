"""Independent reference code for tests, benchmarks and model tooling: plain ONNX Runtime loops, text corpora, file
hashes. Never imported by engine/, models/ or provider/ (not shipped in the plugin).

Imports only the standard library, numpy, onnxruntime and tokenizers (never `engine`), and runs on the plugin's
Python 3.12 venv (.venv) as well as on the tools' Python 3.11 venv (.venv-tools). This file imports nothing, so
`reference.files` and `reference.corpus` stay stdlib-only.
"""
