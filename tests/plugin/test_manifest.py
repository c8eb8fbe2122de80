"""manifest.yaml and provider/onnx_local.yaml satisfy the plugin daemon's rules, are fully translated, declare exactly
the credential form the engine parses, and load in the SDK's own configuration classes."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.settings.profile import parse_profile
from engine.settings.table import CALL, INSTANCE, SETTINGS, Setting
from scripts.manifest_check import (
    LANGUAGES,
    PLUGIN_TAGS,
    Report,
    check_manifest,
    check_plugin,
    check_provider,
    load_yaml,
    translation_gaps,
)

REPO = Path(__file__).resolve().parents[2]
PROVIDER_YAML = "provider/onnx_local.yaml"
LLM = [{"variable": "__model_type", "value": "llm"}]
EMBEDDING = [{"variable": "__model_type", "value": "text-embedding"}]
RERANK = [{"variable": "__model_type", "value": "rerank"}]
INT4 = [{"variable": "quantization", "value": "int4"}]

# (variable, type, default, option values, show_on) — the exact form, in order.
EXPECTED_FIELDS: list[tuple[str, str, str | None, list[str], list[dict[str, str]]]] = [
    ("model_path", "text-input", None, [], []),
    ("model_file", "text-input", "auto", [], []),
    ("quantization", "select", "none", ["none", "int8", "int4"], []),
    ("quant_block_size", "text-input", "32", [], INT4),
    ("quant_accuracy_level", "select", "4", ["0", "1", "2", "3", "4"], INT4),
    ("intra_op_threads", "text-input", "auto", [], []),
    ("inter_op_threads", "text-input", "1", [], []),
    ("execution_mode", "select", "sequential", ["sequential", "parallel"], []),
    ("graph_optimization_level", "select", "all", ["disabled", "basic", "extended", "all"], []),
    ("spin_wait", "select", "auto", ["auto", "on", "off"], []),
    ("cpu_affinity", "text-input", "auto", [], []),
    ("blas_threads", "text-input", "1", [], []),
    ("context_size", "text-input", "auto", [], []),
    ("idle_unload_minutes", "text-input", "30", [], []),
    ("pooling", "select", "auto", ["auto", "mean", "cls", "last"], EMBEDDING),
    ("normalize", "radio", "true", ["true", "false"], EMBEDDING),
    ("query_prefix", "text-input", "", [], EMBEDDING),
    ("document_prefix", "text-input", "", [], EMBEDDING),
    ("embedding_cache_mb", "text-input", "64", [], EMBEDDING),
    ("score_mode", "select", "probability", ["probability", "logit"], RERANK),
    ("rerank_instruction", "text-input", "", [], RERANK),
    ("max_batch_size", "text-input", "16", [], []),
    ("max_batch_tokens", "text-input", "8192", [], []),
    ("batch_window_ms", "text-input", "2", [], []),
    ("queue_limit", "text-input", "4096", [], []),
    ("mode", "select", "chat", ["chat", "completion"], LLM),
    ("max_generation_seconds", "text-input", "300", [], LLM),
    ("prompt_overflow", "select", "error", ["error", "truncate_oldest"], LLM),
    ("max_concurrent_sequences", "text-input", "4", [], LLM),
    ("prefix_cache_mb", "text-input", "512", [], LLM),
    ("speculative_decoding", "select", "on", ["on", "off"], LLM),
]


@pytest.fixture(scope="module")
def report() -> Report:
    return check_plugin(REPO)


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return load_yaml(REPO / "manifest.yaml")


@pytest.fixture(scope="module")
def provider() -> dict[str, Any]:
    return load_yaml(REPO / PROVIDER_YAML)


def fields_of(provider: dict[str, Any]) -> list[dict[str, Any]]:
    return provider["model_credential_schema"]["credential_form_schemas"]


# ---- the real files ------------------------------------------------------------------------------------------------


def test_declaration_passes_daemon_rules(report: Report) -> None:
    assert report.errors == []
    assert report.warnings == []
    assert list(report.providers) == [PROVIDER_YAML]


def test_every_text_in_four_languages(report: Report) -> None:
    assert translation_gaps(report) == []


def test_manifest_values(manifest: dict[str, Any]) -> None:
    assert (manifest["version"], manifest["type"], manifest["author"], manifest["name"]) == (
        "0.1.0",
        "plugin",
        "onnxlocal",
        "onnx_local",
    )
    assert set(manifest["label"]) == set(LANGUAGES) and manifest["label"]["en_US"] == "ONNX Runtime Local"
    assert set(manifest["description"]) == set(LANGUAGES)
    assert (manifest["icon"], manifest["icon_dark"]) == ("icon.svg", "icon-dark.svg")
    assert manifest["resource"]["memory"] == 2147483648
    assert manifest["resource"]["permission"]["model"]["enabled"] is False
    assert manifest["plugins"] == {"models": [PROVIDER_YAML]}
    assert manifest["meta"] == {
        "version": "0.0.1",
        "arch": ["amd64", "arm64"],
        "runner": {"language": "python", "version": "3.12", "entrypoint": "main"},
        "minimum_dify_version": "1.0.0",
    }
    assert manifest["privacy"] == "PRIVACY.md" and (REPO / "PRIVACY.md").is_file()
    # minimum_dify_version 1.0.0: only tags that plugin daemons before 0.3.0 accept too ("rag" came later).
    assert manifest["tags"] and set(manifest["tags"]) <= PLUGIN_TAGS - {"rag"}


def test_provider_values(provider: dict[str, Any]) -> None:
    assert provider["provider"] == "onnx_local"
    assert provider["supported_model_types"] == ["llm", "text-embedding", "rerank"]
    assert provider["configurate_methods"] == ["customizable-model"]
    assert not (provider.get("provider_credential_schema") or {}).get("credential_form_schemas")
    assert provider["help"]["url"]["en_US"] == "https://github.com/onnxlocal/onnx_local#readme"
    model = provider["model_credential_schema"]["model"]
    assert model["label"]["en_US"] == "Model name"
    assert model["placeholder"]["en_US"] == "A name for this model in Dify"
    assert provider["extra"]["python"] == {
        "provider_source": "provider/onnx_local.py",
        "model_sources": [
            "models/llm/llm.py",
            "models/text_embedding/text_embedding.py",
            "models/rerank/rerank.py",
        ],
    }


def test_credential_form_exact(provider: dict[str, Any]) -> None:
    actual = [
        (
            f["variable"],
            f["type"],
            f.get("default"),
            [o["value"] for o in f.get("options") or []],
            f.get("show_on") or [],
        )
        for f in fields_of(provider)
    ]
    assert actual == EXPECTED_FIELDS


def test_only_model_path_is_required(provider: dict[str, Any]) -> None:
    assert [f["variable"] for f in fields_of(provider) if f["required"] is not False] == ["model_path"]
    assert all(isinstance(f["required"], bool) for f in fields_of(provider))


def test_help_names_every_choice(provider: dict[str, Any]) -> None:
    """Select/radio help texts state the allowed values (in every language, since values are not translated)."""
    for form in fields_of(provider):
        for option in form.get("options") or []:
            for language in LANGUAGES:
                assert option["value"] in form["help"][language], (form["variable"], option["value"], language)


def test_icons_are_small_svgs() -> None:
    for name in ("icon.svg", "icon-dark.svg", "icon-large.svg", "icon-large-dark.svg"):
        text = (REPO / "_assets" / name).read_text(encoding="utf-8")
        assert text.lstrip().startswith("<svg") and "</svg>" in text, name
        assert len(text) < 4096, name


# ---- the checker rejects what the daemon rejects -------------------------------------------------------------------


def manifest_errors(manifest: dict[str, Any]) -> list[str]:
    report = Report(root=REPO)
    check_manifest(report, manifest)
    return report.errors


def provider_errors(provider: dict[str, Any]) -> list[str]:
    report = Report(root=REPO)
    check_provider(report, PROVIDER_YAML, provider)
    return report.errors


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("author", "OnnxLocal", "author"),
        ("author", "0f8fad5b-d9cb-469f-a165-70867728950e", "UUID"),
        ("name", "onnx.local", "name"),
        ("version", "0.1", "version"),
        ("version", 1.0, "version"),
        ("type", "tool", "type"),
        ("icon", "missing.svg", "icon"),
        ("created_at", "21/11/2026", "created_at"),
        ("tags", ["llm"], "tags"),
        ("label", {"zh_Hans": "x"}, "label.en_US"),
        ("label", {"en_US": "x", "zh_CN": "y"}, "zh_CN"),
        ("description", {"en_US": "x" * 1024}, "1024"),
        ("privacy", "NOPE.md", "privacy"),
        ("repo", "not a url", "repo"),
    ],
)
def test_manifest_rule_violations(manifest: dict[str, Any], key: str, value: Any, expected: str) -> None:
    broken = copy.deepcopy(manifest)
    broken[key] = value
    errors = manifest_errors(broken)
    assert errors and any(expected in e for e in errors), errors


def test_manifest_structure_violations(manifest: dict[str, Any]) -> None:
    cases = [
        (("resource", "memory"), "2GB", "resource.memory"),
        (("meta", "arch"), ["x86"], "meta.arch"),
        (("meta", "runner", "language"), "go", "meta.runner.language"),
        (("meta", "runner", "entrypoint"), "nothere", "nothere.py"),
        (("plugins", "tools"), ["provider/x.yaml"], "plugins.tools"),
        (("plugins", "models"), ["provider/missing.yaml"], "missing.yaml"),
    ]
    for path, value, expected in cases:
        broken = copy.deepcopy(manifest)
        target = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        errors = manifest_errors(broken)
        assert any(expected in e for e in errors), (path, errors)


def mutate_field(provider: dict[str, Any], variable: str, changes: dict[str, Any]) -> dict[str, Any]:
    broken = copy.deepcopy(provider)
    form = next(f for f in fields_of(broken) if f["variable"] == variable)
    form.update(changes)
    return broken


@pytest.mark.parametrize(
    ("variable", "changes", "expected"),
    [
        ("queue_limit", {"default": 4096}, "must be a string"),
        ("normalize", {"default": True}, "must be a string"),
        ("quantization", {"default": "int2"}, "not one of the options"),
        ("quantization", {"type": "dropdown"}, "type"),
        ("quantization", {"options": [{"value": f"v{i}", "label": {"en_US": "x"}} for i in range(129)]}, "options"),
        ("model_file", {"default": "x" * 256}, "at most 255"),
        ("model_file", {"label": {"zh_Hans": "x"}}, "label.en_US"),
        ("model_file", {"tooltip": {"en_US": "x"}}, "unknown key"),
        ("model_file", {"required": "no"}, "required"),
        ("model_file", {"options": [{"value": "a", "label": {"en_US": "a"}}]}, "only select and radio"),
        ("pooling", {"show_on": [{"variable": "__model_type", "value": "tts"}]}, "show_on"),
        ("quant_block_size", {"show_on": [{"variable": "quantisation", "value": "int4"}]}, "unknown variable"),
        ("quant_block_size", {"show_on": [{"variable": "quantization", "value": "int3"}]}, "int3"),
        ("mode", {"variable": "model_path"}, "duplicate"),
    ],
)
def test_field_rule_violations(provider: dict[str, Any], variable: str, changes: dict[str, Any], expected: str) -> None:
    errors = provider_errors(mutate_field(provider, variable, changes))
    assert errors and any(expected in e for e in errors), errors


def test_provider_structure_violations(provider: dict[str, Any]) -> None:
    too_many = copy.deepcopy(provider)
    count = 33 - len(fields_of(too_many))  # one past the daemon's limit, however many fields the form has
    extra = [{"variable": f"x{i}", "type": "text-input", "label": {"en_US": "x"}} for i in range(count)]
    fields_of(too_many).extend(extra)
    assert any("at most 32" in e for e in provider_errors(too_many))

    cases: list[tuple[str, Any, str]] = [
        ("supported_model_types", ["llm", "embedding"], "embedding"),
        ("configurate_methods", [], "configurate_methods"),
        ("icon_small", {"en_US": "missing.svg"}, "missing.svg"),
        ("icon_large_dark", {"en_US": "missing-dark.svg"}, "missing-dark.svg"),
        ("provider", "", "provider"),
        ("models", ["models/llm/*.yaml"], "models"),
        ("extra", {"python": {"provider_source": "provider/nope.py", "model_sources": []}}, "provider_source"),
    ]
    for key, value, expected in cases:
        broken = copy.deepcopy(provider)
        broken[key] = value
        errors = provider_errors(broken)
        assert any(expected in e for e in errors), (key, errors)


def test_translation_gaps_are_reported(provider: dict[str, Any]) -> None:
    report = check_plugin(REPO)
    broken = mutate_field(provider, "queue_limit", {"placeholder": {"en_US": "4096", "zh_Hans": "4096"}})
    del next(f for f in fields_of(broken) if f["variable"] == "mode")["help"]["ja_JP"]
    report.providers[PROVIDER_YAML] = broken
    gaps = translation_gaps(report)
    assert any("queue_limit.placeholder: missing ja_JP, pt_BR" in g for g in gaps), gaps
    assert any("mode.help: missing ja_JP" in g for g in gaps), gaps


# ---- the SDK loads them --------------------------------------------------------------------------------------------

SDK_LOAD = """
import json, os, sys
os.chdir(sys.argv[1])
from dify_plugin.core.entities.plugin.setup import PluginConfiguration
from dify_plugin.core.utils.yaml_loader import load_yaml_file
from dify_plugin.entities.model.provider import ModelProviderConfiguration

manifest = PluginConfiguration(**load_yaml_file("manifest.yaml"))
providers = [ModelProviderConfiguration(**load_yaml_file(path)) for path in manifest.plugins.models]
forms = providers[0].model_credential_schema.credential_form_schemas
json.dump({
    "name": manifest.name, "version": manifest.version, "author": manifest.author,
    "created_at": manifest.created_at.isoformat(), "arch": [a.value for a in manifest.meta.arch],
    "provider": providers[0].provider,
    "model_types": [t.value for t in providers[0].supported_model_types],
    "methods": [m.value for m in providers[0].configurate_methods],
    "fields": [[f.variable, f.type.value, f.default, [o.value for o in f.options or []],
                [s.model_dump() for s in f.show_on], f.required] for f in forms],
    "python": providers[0].extra.python.model_dump(),
}, sys.stdout)
"""


def test_sdk_configuration_classes_parse_them() -> None:
    """PluginConfiguration / ModelProviderConfiguration, as the SDK loads them at start (in a subprocess: importing
    dify_plugin monkey-patches the process with gevent)."""
    result = subprocess.run(
        [sys.executable, "-c", SDK_LOAD, str(REPO)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout)
    assert (loaded["name"], loaded["version"], loaded["author"]) == ("onnx_local", "0.1.0", "onnxlocal")
    assert loaded["created_at"].startswith("2026-") and loaded["arch"] == ["amd64", "arm64"]
    assert loaded["provider"] == "onnx_local"
    assert loaded["model_types"] == ["llm", "text-embedding", "rerank"]
    assert loaded["methods"] == ["customizable-model"]
    assert [f[:5] for f in loaded["fields"]] == [list(f) for f in EXPECTED_FIELDS]
    assert [f[0] for f in loaded["fields"] if f[5]] == ["model_path"]
    assert loaded["python"]["provider_source"] == "provider/onnx_local.py"


# ---- the engine's settings table and the form agree ---------------------------------------------------------------

FORM_TYPES = {"choice": "select", "boolean": "radio"}


def table_field(setting: Setting) -> tuple[str, str, str | None, list[str], list[dict[str, str]]]:
    show_on = [{"variable": variable, "value": value} for variable, value in setting.show_on]
    if len(setting.model_types) == 1:  # Dify's show_on cannot say "one of several types": shown for all then
        show_on.append({"variable": "__model_type", "value": setting.model_types[0]})
    return (setting.name, FORM_TYPES.get(setting.kind, "text-input"), setting.default, list(setting.options), show_on)


def yaml_field(field: dict[str, Any]) -> tuple[str, str, str | None, list[str], list[dict[str, str]]]:
    default = field.get("default")
    return (
        field["variable"],
        field["type"],
        None if default is None else str(default),
        [str(option["value"]) for option in field.get("options", [])],
        [{"variable": c["variable"], "value": str(c["value"])} for c in field.get("show_on", [])],
    )


def test_settings_table_matches_the_form(provider: dict[str, Any]) -> None:
    assert [yaml_field(f) for f in fields_of(provider)] == [table_field(s) for s in SETTINGS]
    assert [f.get("required", False) for f in fields_of(provider)] == [s.default is None for s in SETTINGS]


def test_the_table_comparison_catches_a_changed_default(provider: dict[str, Any]) -> None:
    changed = copy.deepcopy(provider)
    next(f for f in fields_of(changed) if f["variable"] == "max_batch_size")["default"] = "32"
    assert [yaml_field(f) for f in fields_of(changed)] != [table_field(s) for s in SETTINGS]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_default_parses_and_every_setting_has_a_scope(setting: Setting) -> None:
    assert setting.scope in (INSTANCE, CALL)
    if setting.default is not None:
        setting.parse(setting.default)


@pytest.mark.parametrize("model_type", ["text-embedding", "rerank", "llm"])
def test_empty_form_equals_the_table_defaults_typed_in(model_type: str, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    roots = (tmp_path.resolve(),)
    typed = {s.name: s.default for s in SETTINGS if s.default is not None and s.applies_to(model_type)}
    assert parse_profile({"model_path": "m"}, model_type, roots) == parse_profile(
        {**typed, "model_path": "m"}, model_type, roots
    )
