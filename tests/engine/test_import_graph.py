"""The engine's imports form layers: a module imports only its own layer or lower ones, never in a cycle, never
through an import guard, and never the Dify adapters. Imports inside functions count like any other."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "engine"

# Lowest first. A module may import modules of its own layer (without a cycle) and of lower layers.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("engine.errors", "engine.native"),
    (
        "engine.channel",
        "engine.paths",
        "engine.metrics",
        "engine.settings.table",
        "engine.rate_limit",
        "engine.hf_source",
    ),
    ("engine.settings.profile", "engine.model_config"),
    ("engine.model_files", "engine.governor", "engine.placement", "engine.quantize_cache"),
    ("engine.quantize", "engine.model_info", "engine.worker", "engine.memory", "engine.hub"),
    ("engine.session_builder", "engine.graph_edit", "engine.text"),
    ("engine.encoders", "engine.generation", "engine.registry"),
    ("engine.api",),
    ("engine.prometheus",),  # reads the engine's figures for the metrics endpoint
    ("engine.cli", "engine.__main__"),  # the command line drives the engine through engine.api
)
# Model families are siblings: neither reaches into the other.
SIBLINGS = (("engine.encoders", "engine.generation"),)
FORBIDDEN_PREFIXES = ("dify_plugin", "models", "provider", "tests", "bench", "tools", "reference", "main")


def module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def engine_modules() -> dict[str, ast.Module]:
    return {module_name(path): ast.parse(path.read_text(), str(path)) for path in sorted(ENGINE.rglob("*.py"))}


def imported_names(tree: ast.Module, name: str) -> Iterator[str]:
    """Every module an import statement anywhere in the tree names (function bodies included)."""
    package = name if tree.body and name.count(".") == 0 else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], base])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)  # `from engine.x import module`


def edges() -> dict[str, set[str]]:
    modules = engine_modules()
    graph: dict[str, set[str]] = {}
    for name, tree in modules.items():
        targets = {target for target in imported_names(tree, name) if target in modules and target != name}
        graph[name] = {t for t in targets if t != "engine"}
    return graph


def layer_of(module: str) -> int:
    for index, members in enumerate(LAYERS):
        if any(module == member or module.startswith(member + ".") for member in members):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_has_a_layer() -> None:
    for module in engine_modules():
        if module != "engine":
            layer_of(module)


def test_no_import_goes_up_a_layer() -> None:
    upward = [
        f"{source} (layer {layer_of(source)}) imports {target} (layer {layer_of(target)})"
        for source, targets in edges().items()
        if source != "engine"
        for target in targets
        if layer_of(target) > layer_of(source)
    ]
    assert upward == []


def test_model_families_do_not_import_each_other() -> None:
    crossing = [
        f"{source} imports {target}"
        for source, targets in edges().items()
        for target in targets
        for a, b in SIBLINGS
        if (source.startswith(a) and target.startswith(b)) or (source.startswith(b) and target.startswith(a))
    ]
    assert crossing == []


def test_no_cycles_including_function_level_imports() -> None:
    assert find_cycle(edges()) is None


def test_the_cycle_check_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_engine_never_imports_adapters_or_dev_code() -> None:
    bad = [
        f"{name} imports {target}"
        for name, tree in engine_modules().items()
        for target in imported_names(tree, name)
        if target.split(".")[0] in FORBIDDEN_PREFIXES
    ]
    assert bad == []


@pytest.mark.parametrize("name", sorted(engine_modules()))
def test_no_import_guards(name: str) -> None:
    tree = engine_modules()[name]
    guards = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.ExceptHandler)
        and node.type is not None
        and any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in ast.walk(node.type))
    ]
    assert guards == [], f"{name}: except ImportError on lines {guards}"
