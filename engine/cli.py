"""A command line that needs no Dify: `python -m engine inspect|chat|embed|rerank|bench|placement|pull`.

Try a model directory before adding it in Dify, with the settings the "add model" form takes, under the same
names (`--set intra_op_threads=2` or `--intra_op_threads 2`), parsed and checked by the same code
(`engine.settings.profile.parse_profile`): what fails here fails there with the same message. The model
directory given on the command line is allowed as a model root, besides ONNX_LOCAL_MODEL_ROOTS.

Everything goes through the engine's one door (`engine.api.Engine`) as the plugin's adapters do. Answers and
results go to stdout; progress, timings of a chat and log records go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

import numpy as np
import onnx

from engine.api import Engine
from engine.encoders.embedding import resolve_pooling
from engine.errors import EngineError
from engine.generation.constraint import OutputFormat, parse_json_schema
from engine.generation.events import Finished, GenerationParams, TextDelta, ToolCallDelta
from engine.generation.loader import eos_token_ids
from engine.generation.sampling import defaults_from_generation_config
from engine.governor import CoreGovernor, compact
from engine.hub import STATE_DIR, VARIANTS, PullError, RepoFile, Selection, pull, variant_name
from engine.memory import MemoryBudget
from engine.model_config import position_limit, read_optional_json, resolve_context_size, trained_length
from engine.model_files import external_data_files, find_model_files, is_quantized, variant_rank
from engine.model_info import ModelInfo
from engine.paths import MODEL_ROOTS_ENV, model_roots
from engine.placement import CoreAllocator, CpuTopology, spinning_enabled
from engine.settings.profile import RuntimeProfile, parse_profile
from engine.settings.table import BY_NAME, MODEL_TYPES, SETTINGS
from engine.text.chat_template import ChatTemplate
from engine.text.messages import ChatMessage, ToolSpec
from engine.text.tokenizer import load_tokenizer

log = logging.getLogger("engine.cli")
T = TypeVar("T")

TYPE_ALIASES = {"llm": "llm", "chat": "llm", "embedding": "text-embedding", **{t: t for t in MODEL_TYPES}}
DEFAULT_MAX_TOKENS = 512  # as the Dify adapter
BENCH_PROMPT = (
    "Explain, in a few short paragraphs, how a hash table works: hashing keys to buckets, handling collisions, "
    "resizing when the load factor grows, and what each operation costs on average and in the worst case."
)
_WORDS = tuple(BENCH_PROMPT.replace(",", " ").replace(".", " ").replace(":", " ").split())  # bench texts


class UsageError(Exception):
    """A command-line mistake (not a setting): exit status 2 with the message."""


# ---- settings, named as in the form


def _add_settings(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "settings of the 'add model' form",
        "--set NAME=VALUE (repeatable) or --NAME VALUE; the same names, defaults and checks as in Dify",
    )
    group.add_argument("--set", dest="set_values", action="append", default=[], metavar="NAME=VALUE")
    for setting in SETTINGS:
        if setting.name == "model_path":
            continue
        flags = [f"--{setting.name}"]
        if "_" in setting.name:
            flags.append(f"--{setting.name.replace('_', '-')}")
        default = "required" if setting.default is None else (setting.default or "empty")
        used = "" if len(setting.model_types) == len(MODEL_TYPES) else f"; {', '.join(setting.model_types)}"
        group.add_argument(*flags, dest=f"setting_{setting.name}", metavar="VALUE", help=f"default {default}{used}")


def form_values(args: argparse.Namespace, model_type: str) -> dict[str, str]:
    """The form values given on the command line (strings, as Dify sends them)."""
    values: dict[str, str] = {}
    for setting in SETTINGS:
        value = getattr(args, f"setting_{setting.name}", None)
        if value is not None:
            values[setting.name] = value
    for item in getattr(args, "set_values", []):
        name, equals, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not equals:
            raise UsageError(f"--set {item}: write NAME=VALUE")
        values[name] = value
    for name in values:
        if name == "model_path":
            raise UsageError("model_path is the DIR argument")
        setting = BY_NAME.get(name)
        if setting is None:
            known = ", ".join(s.name for s in SETTINGS if s.name != "model_path")
            raise UsageError(f"{name} is not a setting of the form; the settings are: {known}")
        if not setting.applies_to(model_type):
            kinds = " and ".join(setting.model_types)
            raise UsageError(f"{name} is a setting of {kinds} models, not of {model_type} models")
    return values


def detect_type(directory: Path, model_file: str = "auto") -> str:
    """llm for a graph with a KV cache (an LLM-style reranker looks the same: `--type rerank`, or the rerank
    command); rerank for a sequence-classification config; text-embedding otherwise."""
    files = find_model_files(directory, model_file)
    if files.kind == "decoder":
        return "llm"
    architectures = read_optional_json(directory / "config.json").get("architectures") or []
    if any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in architectures):
        return "rerank"
    return "text-embedding"


def model_directory(raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise UsageError(f"{raw}: not a directory")
    return path.resolve()


def build_profile(args: argparse.Namespace, wanted: Sequence[str] = MODEL_TYPES) -> RuntimeProfile:
    """The profile of DIR with the command line's settings, through the form's parser; the directory itself
    counts as a model root."""
    directory = model_directory(args.dir)
    model_type = TYPE_ALIASES.get(args.type or "", "")
    if args.type and not model_type:
        raise UsageError(f"--type {args.type}: one of llm, text-embedding, rerank")
    if not model_type:
        model_file = str(getattr(args, "setting_model_file", None) or "auto")
        for item in args.set_values:
            if item.partition("=")[0].strip().replace("-", "_") == "model_file":
                model_file = item.partition("=")[2].strip() or "auto"
        model_type = detect_type(directory, model_file)
        if model_type == "llm" and tuple(wanted) == ("rerank",):
            model_type = "rerank"  # a decoder asked to rerank: an LLM-style reranker (Qwen3-Reranker)
    if model_type not in wanted:
        raise UsageError(f"{directory.name} is a {model_type} model; this command needs {' or '.join(wanted)}")
    values = form_values(args, model_type)
    roots = (directory, *model_roots())
    return parse_profile({**values, "model_path": str(directory)}, model_type, roots)


# ---- output helpers


def _mb(size: int | float) -> str:
    return f"{size / 1e6:.1f} MB"


def _size(size: int | float) -> str:
    return _mb(size) if size >= 1e5 else f"{size / 1e3:.1f} KB"


def _table(rows: Sequence[tuple[str, object]], out: TextIO) -> None:
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}", file=out)


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _emit_json(data: object, out: TextIO) -> None:
    print(json.dumps(data, indent=1, default=str), file=out)


# ---- inspect


def _onnx_listing(directory: Path, chosen: Path) -> list[dict[str, object]]:
    listing = []
    for folder in (directory, directory / "onnx"):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.onnx")):
            try:
                data = sum(p.stat().st_size for p in external_data_files(path.resolve(), directory))
            except EngineError:
                data = 0
            listing.append(
                {
                    "file": path.relative_to(directory).as_posix(),
                    "bytes": path.stat().st_size + data,
                    "variant": _variant(path),
                    "rank": variant_rank(path.name),
                    "chosen": path.resolve() == chosen,
                }
            )
    return listing


def _variant(path: Path) -> str:
    """The variant its name says; a graph named like fp32 whose weights are quantized (genai builds name their
    int4 graph model.onnx) says so."""
    name = variant_name(path.name)
    try:
        return "quantized" if name == "fp32" and is_quantized(path.resolve()) else name
    except EngineError:
        return name


def _kv_dtype(onnx_path: Path) -> tuple[str, int]:
    model = onnx.load(str(onnx_path), load_external_data=False)
    for value in model.graph.input:
        if value.name.startswith("past_key_values"):
            elem = value.type.tensor_type.elem_type
            np_type = onnx.helper.tensor_dtype_to_np_dtype(elem)
            return str(np_type), np.dtype(np_type).itemsize
    return "float32", 4


def _tokenizer_facts(directory: Path) -> dict[str, object]:
    tokenizer = load_tokenizer(directory)
    raw = read_optional_json(directory / "tokenizer.json")
    config = read_optional_json(directory / "tokenizer_config.json")
    special = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = config.get(key)
        text = value.get("content") if isinstance(value, dict) else value
        if isinstance(text, str):
            special[key.removesuffix("_token")] = text
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    return {
        "type": model.get("type", "?"),
        "vocab_size": tokenizer.get_vocab_size(),
        "special": special,
        "model_max_length": config.get("model_max_length"),
    }


def inspect(args: argparse.Namespace, out: TextIO) -> int:
    profile = build_profile(args)
    directory = profile.model_dir
    files = find_model_files(directory, profile.model_file)
    facts: dict[str, Any] = {
        "directory": str(directory),
        "model_type": profile.model_type,
        "onnx_files": _onnx_listing(directory, files.onnx_path),
        "chosen": files.onnx_path.relative_to(directory).as_posix(),
        "chosen_by": "model_file" if profile.model_file != "auto" else "auto",
        "layout": files.layout,
        "graph": files.kind,
        "external_data": [p.relative_to(directory).as_posix() for p in files.external_data],
        "bytes": files.size_bytes,
        "context": {
            "size": resolve_context_size(profile.context_size, directory, profile.model_type),
            "setting": "auto" if profile.context_size is None else profile.context_size,
            "trained": trained_length(directory),
            "position_limit": position_limit(directory),
        },
        "tokenizer": _tokenizer_facts(directory),
    }
    state = _pull_state(directory)
    if state:
        facts["pulled_from"] = state
    if profile.model_type == "llm":
        template = ChatTemplate.load(directory)
        source = (template.source + (template.tool_source or "")) if template else ""
        generation_config = read_optional_json(directory / "generation_config.json")
        defaults = defaults_from_generation_config(generation_config)
        eos_text = dict(template.special_tokens).get("eos_token") if template else None
        tokenizer = load_tokenizer(directory)
        facts["template"] = {
            "present": template is not None,
            "source": "chat_template.jinja"
            if (directory / "chat_template.jinja").is_file()
            else "tokenizer_config.json",
            "tools": template is not None and template.accepts_tools,
            "tool_use_variant": template is not None and template.tool_source is not None,
            "reasoning": "<think>" in source,
        }
        facts["generation_defaults"] = {
            "greedy": defaults.greedy,
            "temperature": defaults.temperature,
            "top_p": defaults.top_p,
            "top_k": defaults.top_k,
            "repetition_penalty": defaults.repetition_penalty,
            "max_new_tokens": generation_config.get("max_new_tokens"),
            "eos_token_ids": sorted(eos_token_ids(directory, tokenizer.token_to_id(eos_text) if eos_text else None)),
        }
    elif profile.model_type == "text-embedding":
        assert profile.embedding is not None
        facts["pooling"] = resolve_pooling(profile.embedding, directory)
        facts["normalize"] = profile.embedding.normalize
    if not args.no_load:
        engine = Engine()
        try:
            info = engine.model_info(profile)
        finally:
            engine.close()
        facts["loaded"] = {
            "file": info.onnx_file,
            "seconds": round(info.load_seconds, 3),
            "threads": info.threads,
            "cores": compact(info.cores) if info.cores is not None else "unpinned",
            "rss_delta_mb": info.details.get("rss_delta_mb"),
            "details": {k: v for k, v in info.details.items() if k != "rss_delta_mb"},
        }
        if profile.model_type == "llm":
            dtype, itemsize = _kv_dtype(files.onnx_path)
            d = info.details
            per_token = int(d["layers"]) * 2 * int(d["kv_heads"]) * int(d["head_dim"]) * itemsize
            facts["kv_cache"] = {
                "layout": files.layout,
                "layers": d["layers"],
                "kv_heads": d["kv_heads"],
                "head_dim": d["head_dim"],
                "dtype": dtype,
                "bytes_per_token": per_token,
                "bytes_at_context": per_token * facts["context"]["size"],
                "vocab_size": d["vocab_size"],
                "logits": d.get("logits"),
                "update": d.get("kv_cache"),
            }
    if args.json:
        _emit_json(facts, out)
        return 0
    _print_inspect(facts, out)
    return 0


def _pull_state(directory: Path) -> dict[str, object] | None:
    try:
        state = json.loads((directory / STATE_DIR / "state.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not state.get("complete"):
        return None
    return {"repo_id": state.get("repo_id"), "commit": state.get("commit"), "selection": state.get("selection")}


def _print_inspect(facts: dict[str, Any], out: TextIO) -> None:
    rows: list[tuple[str, object]] = [("directory", facts["directory"]), ("model type", facts["model_type"])]
    if "pulled_from" in facts:
        pulled = facts["pulled_from"]
        rows.append(("pulled from", f"{pulled['repo_id']} at {str(pulled['commit'])[:12]}"))
    for index, entry in enumerate(facts["onnx_files"]):
        mark = f"← chosen ({facts['chosen_by']})" if entry["chosen"] else ""
        line = f"{entry['file']:<32} {_mb(entry['bytes']):>10}  {entry['variant']:<10} {mark}".rstrip()
        rows.append(("ONNX files" if index == 0 else "", line))
    rows += [
        ("layout", f"{facts['layout']} ({facts['graph']} graph)"),
        ("external data", ", ".join(facts["external_data"]) or "none"),
        ("size", _mb(facts["bytes"])),
    ]
    context = facts["context"]
    how = "auto: the trained length" if context["setting"] == "auto" else "context_size"
    limit = f"; position limit {context['position_limit']}" if context["position_limit"] else ""
    rows.append(("context", f"{context['size']} tokens ({how}{limit})"))
    tokenizer = facts["tokenizer"]
    special = ", ".join(f"{k} {v!r}" for k, v in tokenizer["special"].items()) or "no special tokens named"
    rows.append(("tokenizer", f"{tokenizer['type']}, vocabulary {tokenizer['vocab_size']}, {special}"))
    if "template" in facts:
        template = facts["template"]
        if not template["present"]:
            rows.append(("chat template", "none (a base model: set mode to completion)"))
        else:
            tools = "yes" if template["tools"] else "no"
            extra = " (a tool_use template too)" if template["tool_use_variant"] else ""
            reasoning = "yes (<think> in the template)" if template["reasoning"] else "no"
            rows.append(("chat template", f"{template['source']}; tools: {tools}{extra}; reasoning: {reasoning}"))
        g = facts["generation_defaults"]
        sampling = (
            "greedy" if g["greedy"] else f"temperature {g['temperature']}, top_p {g['top_p']}, top_k {g['top_k']}"
        )
        rows.append(
            (
                "generation",
                f"{sampling}, repetition_penalty {g['repetition_penalty']}, eos ids {g['eos_token_ids']}"
                + (f", max_new_tokens {g['max_new_tokens']}" if g["max_new_tokens"] else ""),
            )
        )
    if "pooling" in facts:
        rows.append(("pooling", f"{facts['pooling']}, {'normalized' if facts['normalize'] else 'not normalized'}"))
    loaded = facts.get("loaded")
    if loaded:
        details = loaded["details"]
        rows.append(
            (
                "loaded",
                f"{loaded['file']} in {loaded['seconds']:.2f} s (+{loaded['rss_delta_mb']} MB RSS), "
                f"{loaded['threads']} thread(s) on cores {loaded['cores']}, "
                f"{'spinning' if details.get('spin') else 'no spinning'}",
            )
        )
        if "dimension" in details:
            rows.append(("dimension", details["dimension"]))
        if "score_mode" in details:
            rows.append(("score mode", details["score_mode"]))
    kv = facts.get("kv_cache")
    if kv:
        rows.append(
            (
                "KV cache",
                f"{kv['layout']} layout: {kv['layers']} layers × {kv['kv_heads']} KV heads × {kv['head_dim']}, "
                f"{kv['dtype']}, {kv['bytes_per_token'] / 1024:.1f} KB per token "
                f"({_mb(kv['bytes_at_context'])} at the full context)",
            )
        )
        if kv.get("update"):
            rows.append(("KV update", kv["update"]))
        rows.append(("vocabulary", f"{kv['vocab_size']} logits, computed for the {kv['logits']}"))
    _table(rows, out)


# ---- chat


def _chat_params(args: argparse.Namespace) -> GenerationParams:
    names = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
    overrides: list[tuple[str, float | int]] = [(n, getattr(args, n)) for n in names if getattr(args, n) is not None]
    if args.seed is not None:
        overrides.append(("seed", args.seed))
    return GenerationParams(
        max_tokens=args.max_tokens,
        stop=tuple(args.stop or ()),
        overrides=tuple(overrides),
        output_format=_output_format(args),
        enable_thinking=False if args.no_think else None,
        thinking_budget=args.thinking_budget,
    )


def _output_format(args: argparse.Namespace) -> OutputFormat | None:
    """--json-schema FILE (the answer valid against it) or --json (any JSON object)."""
    if args.json_schema:
        try:
            text = Path(args.json_schema).read_text(encoding="utf-8")
        except OSError as error:
            raise UsageError(f"--json-schema {args.json_schema}: {error}") from None
        return parse_json_schema(text)
    return OutputFormat("json_object") if args.json_object else None


def _tools(path: str | None) -> list[ToolSpec]:
    if not path:
        return []
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"--tools {path}: {error}") from None
    specs = []
    for item in raw if isinstance(raw, list) else [raw]:
        function = item.get("function", item) if isinstance(item, dict) else {}
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise UsageError(f"--tools {path}: each tool needs a name (OpenAI function format)")
        specs.append(ToolSpec(function["name"], function.get("description", ""), function.get("parameters", {})))
    return specs


def _one_turn(
    engine: Engine,
    profile: RuntimeProfile,
    messages: list[ChatMessage],
    params: GenerationParams,
    tools: list[ToolSpec],
    out: TextIO,
    err: TextIO,
) -> tuple[str, Finished | None]:
    texts: list[str] = []
    finished = None
    for event in engine.generate(profile, messages, params, tools):
        if isinstance(event, TextDelta):
            texts.append(event.text)
            out.write(event.text)
            out.flush()
        elif isinstance(event, ToolCallDelta):
            call = event.call
            out.write(f"\n[tool call {call.name}({call.arguments})]")
            out.flush()
        elif isinstance(event, Finished):
            finished = event
    out.write("\n")
    out.flush()
    if finished is not None:
        print(
            f"[{finished.prompt_tokens} prompt tokens, {finished.completion_tokens} generated; time to first "
            f"token {finished.time_to_first_token * 1000:.0f} ms; {finished.decode_tokens_per_second:.1f} tokens/s "
            f"decode; {finished.total_seconds:.2f} s; finish: {finished.finish_reason}]",
            file=err,
            flush=True,
        )
    return "".join(texts), finished


def chat(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    profile = build_profile(args, ("llm",))
    params = _chat_params(args)
    tools = _tools(args.tools)
    engine = Engine()
    try:
        started = time.perf_counter()
        info = engine.model_info(profile)
        print(f"[{info.describe()}; ready in {time.perf_counter() - started:.2f} s]", file=err, flush=True)
        history: list[ChatMessage] = [ChatMessage("system", args.system)] if args.system else []
        prompt = " ".join(args.prompt).strip()
        if prompt or not stdin.isatty():
            text = prompt or stdin.read().strip()
            if not text:
                raise UsageError("nothing to say: give a prompt, or pipe one on stdin")
            _one_turn(engine, profile, [*history, ChatMessage("user", text)], params, tools, out, err)
            return 0
        print("[interactive: an empty line or Ctrl-D ends]", file=err, flush=True)
        while True:
            err.write("> ")
            err.flush()
            line = stdin.readline()
            if not line.strip():
                return 0
            history.append(ChatMessage("user", line.strip()))
            answer, _ = _one_turn(engine, profile, history, params, tools, out, err)
            history.append(ChatMessage("assistant", answer))
    finally:
        engine.close()


# ---- embed and rerank


def _load_and_call(profile: RuntimeProfile, call: Callable[[Engine], T]) -> tuple[ModelInfo, float, T, float]:
    """Load the model in a fresh engine, then make one call: (what loaded, load seconds, result, call seconds)."""
    engine = Engine()
    try:
        started = time.perf_counter()
        info = engine.model_info(profile)
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        result = call(engine)
        return info, loaded, result, time.perf_counter() - started
    finally:
        engine.close()


def embed(args: argparse.Namespace, out: TextIO) -> int:
    profile = build_profile(args, ("text-embedding",))
    input_type = "query" if args.query else "document"
    info, loaded, outcome, seconds = _load_and_call(profile, lambda e: e.embed(profile, args.texts, input_type))
    vectors = np.asarray(outcome.vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1)
    unit = vectors / np.maximum(norms, 1e-12)[:, None]
    cosine = unit @ unit.T
    result = {
        "model": info.name,
        "file": info.onnx_file,
        "load_seconds": round(loaded, 3),
        "dimension": int(vectors.shape[1]),
        "input_type": "query" if args.query else "document",
        "tokens": outcome.tokens,
        "seconds": round(seconds, 4),
        "norms": [round(float(n), 6) for n in norms],
        "cosine": [[round(float(v), 6) for v in row] for row in cosine],
        "vectors": [[round(float(v), 6) for v in row[: args.show]] for row in vectors],
    }
    if args.json:
        _emit_json(result, out)
        return 0
    _table(
        [
            ("model", f"{info.name}: {info.onnx_file}, loaded in {loaded:.2f} s"),
            ("texts", f"{len(args.texts)} ({result['input_type']}), {outcome.tokens} tokens, {seconds * 1000:.1f} ms"),
            (
                "dimension",
                f"{result['dimension']} (pooling {info.details.get('pooling')}, "
                f"{'normalized' if info.details.get('normalize') else 'not normalized'})",
            ),
        ],
        out,
    )
    for index, (text, norm, vector) in enumerate(zip(args.texts, norms, vectors), 1):
        head = ", ".join(f"{v:+.4f}" for v in vector[: args.show])
        print(f"[{index}] norm {norm:.4f}  [{head}, …]  {_short(text)!r}", file=out)
    if len(args.texts) > 1:
        print("cosine", file=out)
        print("     " + "".join(f"{f'[{i}]':>8}" for i in range(1, len(args.texts) + 1)), file=out)
        for i, row in enumerate(cosine, 1):
            print(f"{f'[{i}]':<5}" + "".join(f"{v:8.4f}" for v in row), file=out)
    return 0


def rerank(args: argparse.Namespace, out: TextIO) -> int:
    profile = build_profile(args, ("rerank",))
    info, loaded, hits, seconds = _load_and_call(
        profile, lambda e: e.rerank(profile, args.query, args.docs, args.top_n, args.threshold)
    )
    if args.json:
        _emit_json(
            {
                "model": info.name,
                "query": args.query,
                "seconds": round(seconds, 4),
                "hits": [{"index": h.index, "score": h.score, "text": h.text} for h in hits],
            },
            out,
        )
        return 0
    _table(
        [
            (
                "model",
                f"{info.name}: {info.onnx_file}, loaded in {loaded:.2f} s, score mode {info.details.get('score_mode')}",
            ),
            ("query", repr(_short(args.query))),
            ("documents", f"{len(args.docs)}, scored in {seconds * 1000:.1f} ms"),
        ],
        out,
    )
    print(f"{'rank':<5} {'score':>9}  document", file=out)
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:<5} {hit.score:9.4f}  [{hit.index + 1}] {_short(hit.text)!r}", file=out)
    return 0


# ---- bench


def _texts(count: int, seed: int, low: int = 8, high: int = 128) -> list[str]:
    """Distinct texts of varied lengths (distinct so that the embedding cache never answers for the model)."""
    rng = random.Random(seed)
    return [f"{seed}-{i}: " + " ".join(rng.choices(_WORDS, k=rng.randint(low, high))) for i in range(count)]


def _run_threads(count: int, work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            work(index)
        except BaseException as error:  # reported on the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _bench_llm(engine: Engine, profile: RuntimeProfile, args: argparse.Namespace) -> dict[str, Any]:
    params = GenerationParams(max_tokens=args.max_tokens, overrides=(("temperature", 0.0),))
    messages = [ChatMessage("user", args.prompt or BENCH_PROMPT)]
    for _ in engine.generate(profile, messages, GenerationParams(max_tokens=4, overrides=(("temperature", 0.0),))):
        pass  # warm-up
    runs = []
    for _ in range(args.runs):
        finished: list[Finished] = []
        started = time.perf_counter()

        def one(index: int, finished: list[Finished] = finished) -> None:
            for event in engine.generate(profile, messages, params):
                if isinstance(event, Finished):
                    finished.append(event)

        _run_threads(args.concurrency, one)
        wall = time.perf_counter() - started
        tokens = sum(f.completion_tokens for f in finished)
        runs.append(
            {
                "prompt_tokens": finished[0].prompt_tokens,
                "completion_tokens": tokens,
                "ttft_ms": round(statistics.median(f.time_to_first_token for f in finished) * 1000, 1),
                "decode_tokens_per_second": round(statistics.median(f.decode_tokens_per_second for f in finished), 2),
                "aggregate_tokens_per_second": round(tokens / wall, 2),
                "seconds": round(wall, 3),
            }
        )
    return {
        "kind": "llm",
        "streams": args.concurrency,
        "max_tokens": args.max_tokens,
        "runs": runs,
        "median": {
            key: statistics.median(r[key] for r in runs)
            for key in ("ttft_ms", "decode_tokens_per_second", "aggregate_tokens_per_second")
        },
    }


def _encoder_calls(
    engine: Engine, profile: RuntimeProfile, calls: list[list[str]], concurrency: int
) -> tuple[list[float], int]:
    """`concurrency` callers share the calls, as Dify's indexing fans out; (call latencies, tokens embedded)."""
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def caller(index: int) -> None:
        for position in range(index, len(calls), concurrency):
            started = time.perf_counter()
            if profile.model_type == "rerank":
                engine.rerank(profile, "how does the queue wait for work", calls[position])
                used = 0
            else:
                used = engine.embed(profile, calls[position]).tokens
            with lock:
                latencies.append(time.perf_counter() - started)
                tokens[0] += used

    _run_threads(concurrency, caller)
    return latencies, tokens[0]


def _bench_encoder(engine: Engine, profile: RuntimeProfile, args: argparse.Namespace) -> dict[str, Any]:
    rerank_model = profile.model_type == "rerank"
    if rerank_model:
        engine.rerank(profile, "warm up", _texts(4, 999_999))
    else:
        engine.embed(profile, _texts(4, 999_999))
    runs = []
    for run in range(args.runs):
        texts = _texts(args.texts, run)
        calls = [texts[i : i + args.chunk] for i in range(0, len(texts), args.chunk)]
        started = time.perf_counter()
        latencies, tokens = _encoder_calls(engine, profile, calls, args.concurrency)
        wall = time.perf_counter() - started
        latencies.sort()
        runs.append(
            {
                "texts_per_second": round(len(texts) / wall, 1),
                "tokens_per_second": round(tokens / wall, 1) if tokens else None,
                "call_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
                "call_p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 1),
                "seconds": round(wall, 3),
            }
        )
    return {
        "kind": profile.model_type,
        "texts": args.texts,
        "texts_per_call": args.chunk,
        "concurrent_callers": args.concurrency,
        "runs": runs,
        "median": {"texts_per_second": statistics.median(r["texts_per_second"] for r in runs)},
    }


def bench(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    profile = build_profile(args)
    if args.concurrency is None:
        args.concurrency = 1 if profile.model_type == "llm" else 4  # one chat; a few indexing callers
    for name in ("runs", "concurrency", "max_tokens", "texts", "chunk"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)}: 1 or more")
    engine = Engine()
    try:
        started = time.perf_counter()
        info = engine.model_info(profile)
        print(f"[{info.describe()}; ready in {time.perf_counter() - started:.2f} s]", file=err, flush=True)
        result = (
            _bench_llm(engine, profile, args) if profile.model_type == "llm" else _bench_encoder(engine, profile, args)
        )
        stats = engine.stats().get(info.name, {})
    finally:
        engine.close()
    result.update(model=info.name, file=info.onnx_file, threads=info.threads, placement=stats.get("placement"))
    if args.json:
        _emit_json(result, out)
        return 0
    cores = (stats.get("placement") or {}).get("cores")
    where = f"{info.threads} thread(s), cores {compact(cores) if cores else 'unpinned'}"
    print(f"{info.name}: {info.onnx_file}, {where}", file=out)
    for number, run in enumerate(result["runs"], 1):
        if result["kind"] == "llm":
            line = (
                f"run {number}: prompt {run['prompt_tokens']} tokens, {run['completion_tokens']} generated, "
                f"TTFT {run['ttft_ms']:.0f} ms, decode {run['decode_tokens_per_second']:.1f} tokens/s"
            )
            if result["streams"] > 1:
                line += f", {result['streams']} streams: {run['aggregate_tokens_per_second']:.1f} tokens/s in all"
        else:
            per_token = f", {run['tokens_per_second']:.0f} tokens/s" if run["tokens_per_second"] else ""
            line = (
                f"run {number}: {run['texts_per_second']:.1f} texts/s{per_token}, call p50 {run['call_p50_ms']:.1f} ms "
                f"/ p99 {run['call_p99_ms']:.1f} ms ({result['concurrent_callers']} callers × "
                f"{result['texts_per_call']} texts)"
            )
        print(line, file=out)
    median = result["median"]
    if result["kind"] == "llm":
        print(
            f"median: decode {median['decode_tokens_per_second']:.1f} tokens/s, TTFT {median['ttft_ms']:.0f} ms",
            file=out,
        )
    else:
        print(f"median: {median['texts_per_second']:.1f} texts/s", file=out)
    return 0


# ---- placement


def _placement_profile(args: argparse.Namespace) -> RuntimeProfile:
    """Only the placement and thread settings matter here; parsed through the form like the rest."""
    model_type = TYPE_ALIASES.get(args.type or "llm")
    if model_type is None:
        raise UsageError(f"--type {args.type}: one of llm, text-embedding, rerank")
    here = Path.cwd().resolve()
    return parse_profile({**form_values(args, model_type), "model_path": str(here)}, model_type, (here,))


def placement(args: argparse.Namespace, out: TextIO) -> int:
    profile = _placement_profile(args)
    topology = CpuTopology.read()
    governor = CoreGovernor(pin=lambda tids, cores: set())  # shows the split; pins nothing
    allocator = CoreAllocator(topology, governor)
    budget = MemoryBudget.from_environment()
    chat_model = allocator.place(profile.placement, profile.session, "chat [llm]", interactive=True)
    alone = governor.snapshot()["models"]
    embedder = allocator.place(profile.placement, profile.session, "embedder [text-embedding]", interactive=False)
    both = governor.snapshot()["models"]
    result = {
        "online": compact(topology.online),
        "allowed": compact(topology.allowed),
        "numa_nodes": [compact(node) for node in topology.numa_nodes],
        "cgroup_quota_cpus": topology.quota_cpus,
        "usable_cores": topology.usable_count,
        "memory_budget_mb": budget.budget_bytes // 2**20,
        "max_models": budget.max_models,
        "settings": {
            "cpu_affinity": profile.placement.mode
            if profile.placement.mode != "cores"
            else compact(profile.placement.cores),
            "intra_op_threads": profile.session.intra_op_threads or "auto",
            "spin_wait": profile.session.spin_wait,
        },
        "one_model": {
            "cores": compact(alone["chat [llm]"]["cores"]) if "chat [llm]" in alone else _unpinned(chat_model.cores),
            "threads": chat_model.threads,
            "spinning": spinning_enabled(profile.session, chat_model),
        },
        "two_busy_models": {
            name: compact(both[name]["cores"]) if name in both else _unpinned(placed.cores)
            for name, placed in (("chat [llm]", chat_model), ("embedder [text-embedding]", embedder))
        },
    }
    if args.json:
        _emit_json(result, out)
        return 0
    quota = f"{topology.quota_cpus:g} CPUs (cgroup cpu.max)" if topology.quota_cpus is not None else "none (unlimited)"
    nodes = "; ".join(f"node{i}: {compact(node)}" for i, node in enumerate(topology.numa_nodes))
    settings = result["settings"]
    one = result["one_model"]
    rows: list[tuple[str, object]] = [
        ("online CPUs", result["online"]),
        ("allowed CPUs", f"{result['allowed']} (this process's affinity)"),
        ("NUMA nodes", nodes),
        ("cgroup CPU quota", quota),
        ("usable cores", f"{topology.usable_count} (allowed CPUs within the quota)"),
        ("memory budget", f"{result['memory_budget_mb']} MB, at most {budget.max_models} models loaded"),
        (
            "settings",
            f"cpu_affinity={settings['cpu_affinity']} intra_op_threads={settings['intra_op_threads']} "
            f"spin_wait={settings['spin_wait']}",
        ),
        (
            "one model",
            f"cores {one['cores']}, {one['threads']} thread(s), {'spinning' if one['spinning'] else 'no spinning'}",
        ),
        (
            "two busy models",
            "; ".join(f"{name} → cores {cores}" for name, cores in result["two_busy_models"].items()),
        ),
    ]
    _table(rows, out)
    if profile.placement.mode == "auto":
        print(
            "(auto: a lone busy model computes on every usable core of its NUMA node; busy models split them, "
            "the chat model taking the remainder; idle models keep their threads but no cores of their own)",
            file=out,
        )
    return 0


def _unpinned(cores: tuple[int, ...] | None) -> str:
    return "unpinned" if cores is None else compact(cores)


# ---- pull


class ConsoleProgress:
    """Download progress on stderr: one updating line on a terminal, a line every few seconds otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.total = self.done = 0
        self.started = self.last = time.monotonic()

    def plan(self, files: list[RepoFile], total: int) -> None:
        self.total, self.started = total, time.monotonic()
        if files:
            print(f"downloading {len(files)} file(s), {_mb(total)}", file=self.stream, flush=True)

    def file_started(self, path: str, size: int | None, resume: int) -> None:
        self.done += resume
        if resume and resume != size:
            print(f"{path}: resuming at {_mb(resume)} of {_mb(size or 0)}", file=self.stream, flush=True)

    def advance(self, path: str, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= (0.5 if self.tty else 5.0):
            self.last = now
            self._line(path, now)

    def file_done(self, path: str) -> None:
        last = self.done >= self.total
        if self.tty or last:
            self._line(path, time.monotonic(), done=True, newline=last)

    def _line(self, path: str, now: float, done: bool = False, newline: bool = False) -> None:
        rate = self.done / max(1e-6, now - self.started)
        text = (
            f"{_mb(self.done)} / {_mb(self.total)} ({100 * self.done / max(1, self.total):.0f} %), "
            f"{rate / 1e6:.1f} MB/s  {path}{' done' if done else ''}"
        )
        if self.tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if newline else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def pull_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.into:
        root = Path(args.into).expanduser().absolute()
    else:
        roots = model_roots()
        if not roots:
            raise UsageError(f"no model root: give --into ROOT or set {MODEL_ROOTS_ENV}")
        root = roots[0]
    name = args.repo_id.split("/", 1)[-1]
    directory = root / name
    selection = Selection(args.variant, args.file, args.subfolder)
    started = time.perf_counter()
    result = pull(args.repo_id, directory, args.revision, selection, ConsoleProgress(err))
    seconds = time.perf_counter() - started
    if args.json:
        _emit_json(
            {
                "repo_id": result.repo_id,
                "commit": result.commit,
                "directory": str(result.directory),
                "graph": result.graph,
                "files": [{"path": f.path, "bytes": f.size} for f in result.files],
                "downloaded_bytes": result.downloaded_bytes,
                "resumed_bytes": result.resumed_bytes,
                "up_to_date": result.up_to_date,
                "notes": result.notes,
            },
            out,
        )
        return 0
    print(f"{result.repo_id} at {result.commit[:12]} → {result.directory}", file=out)
    for f in result.files:
        label = f"({variant_name(f.path)})" if f.path == result.graph else ""
        print(f"  {f.path:<40} {_size(f.size or 0):>10}  {label}".rstrip(), file=out)
    for note in result.notes:
        print(f"  note: {note}", file=out)
    if result.up_to_date:
        print(f"up to date ({_mb(result.total_bytes)}); nothing downloaded", file=out)
    else:
        resumed = f", {_mb(result.resumed_bytes)} of it kept from an interrupted pull" if result.resumed_bytes else ""
        print(
            f"downloaded {_mb(result.downloaded_bytes)} in {seconds:.1f} s{resumed}; {_mb(result.total_bytes)} in all",
            file=out,
        )
    in_roots = any(result.directory.parent == r for r in model_roots())
    hint = name if in_roots else str(result.directory)
    print(f"model_path for the 'add model' form: {hint}", file=out)
    return 0


# ---- the parser


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python -m engine",
        description="onnx_local's engine without Dify: try model directories with the 'add model' form's settings.",
    )
    main.add_argument("-v", "--verbose", action="count", default=0, help="log records on stderr (-vv: debug)")
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_command(name: str, help_text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("dir", metavar="DIR", help="the model directory")
        command.add_argument("--type", help="llm, text-embedding or rerank (default: read from the files)")
        return command

    command = model_command("inspect", "what a model directory holds and how the engine would load it")
    command.add_argument("--no-load", action="store_true", help="read the files only; do not load the model")
    command.add_argument("--json", action="store_true")
    _add_settings(command)

    command = model_command("chat", "stream a chat answer to stdout (timings on stderr)")
    command.add_argument("prompt", nargs="*", help="the user message (default: stdin, or interactive on a terminal)")
    command.add_argument("--system", help="a system message")
    command.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        command.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float)
    command.add_argument("--top-k", dest="top_k", type=int)
    command.add_argument("--seed", type=int)
    command.add_argument("--stop", action="append", help="a stop sequence (repeatable)")
    command.add_argument("--tools", help="a JSON file of tools (OpenAI function format)")
    command.add_argument("--json-schema", help="a JSON schema file: the answer is constrained to be valid against it")
    command.add_argument("--json", dest="json_object", action="store_true", help="the answer is one JSON object")
    command.add_argument("--no-think", action="store_true", help="enable_thinking=false (templates with the switch)")
    command.add_argument("--thinking-budget", type=int, help="most tokens inside <think>…</think>")
    _add_settings(command)

    command = model_command("embed", "embed texts: dimension, norms, cosine similarities")
    command.add_argument("texts", nargs="+", metavar="TEXT")
    command.add_argument("--query", action="store_true", help="embed as queries (query_prefix, interactive lane)")
    command.add_argument("--show", type=int, default=4, help="leading vector values shown (default 4)")
    command.add_argument("--json", action="store_true")
    _add_settings(command)

    command = model_command("rerank", "score documents against a query, best first")
    command.add_argument("query", metavar="QUERY")
    command.add_argument("docs", nargs="+", metavar="DOC")
    command.add_argument("--top-n", type=int)
    command.add_argument("--threshold", type=float)
    command.add_argument("--json", action="store_true")
    _add_settings(command)

    command = model_command("bench", "a quick speed check: decode tokens/s (LLM), texts/s (embedding, rerank)")
    command.add_argument("--runs", type=int, default=3)
    command.add_argument("--concurrency", type=int, default=None, help="callers at once (LLM 1, encoders 4)")
    command.add_argument("--max-tokens", type=int, default=128, help="LLM: tokens per answer (greedy)")
    command.add_argument("--prompt", help="LLM: the prompt (default: a fixed ~40-token question)")
    command.add_argument("--texts", type=int, default=256, help="encoders: texts per run")
    command.add_argument("--chunk", type=int, default=8, help="encoders: texts per call (Dify sends a few)")
    command.add_argument("--json", action="store_true")
    _add_settings(command)

    command = commands.add_parser(
        "placement", help="CPU topology, quota, and the cores cpu_affinity=auto would give one and two busy models"
    )
    command.add_argument("--type", help="model type whose settings are read (default llm)")
    command.add_argument("--json", action="store_true")
    _add_settings(command)

    command = commands.add_parser(
        "pull",
        help="download one variant of a Hugging Face model (resumable)",
        description="Download the files one variant of a Hub model needs into ROOT/<name> (default: the first "
        f"model root, {MODEL_ROOTS_ENV}). Resumes interrupted downloads; progress on stderr; honours HF_TOKEN, "
        "HF_ENDPOINT and HF_HUB_OFFLINE.",
    )
    command.add_argument("repo_id", metavar="REPO_ID", help="e.g. Xenova/all-MiniLM-L6-v2")
    command.add_argument("--revision", help="branch, tag or commit (default: the default branch)")
    command.add_argument("--variant", choices=VARIANTS, default="auto", help="auto = the engine's own CPU choice")
    command.add_argument("--file", help="an exact ONNX file instead of a variant (like model_file)")
    command.add_argument("--subfolder", help="a folder of the repository holding the model")
    command.add_argument("--into", metavar="ROOT", help="the model root to download into")
    command.add_argument("--json", action="store_true")
    return main


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    args = parser().parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=err, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "inspect":
            return inspect(args, out)
        if args.command == "chat":
            return chat(args, out, err, sys.stdin)
        if args.command == "embed":
            return embed(args, out)
        if args.command == "rerank":
            return rerank(args, out)
        if args.command == "bench":
            return bench(args, out, err)
        if args.command == "placement":
            return placement(args, out)
        return pull_command(args, out, err)
    except UsageError as error:
        print(f"error: {error}", file=err)
        return 2
    except PullError as error:
        print(f"error: {error}", file=err)
        return 1
    except EngineError as error:
        print(f"error: {error}", file=err)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=err)
        return 130
