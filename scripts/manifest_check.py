"""Check manifest.yaml and the model-provider YAMLs against the Dify plugin daemon's rules.

The rules mirror the daemon's Go validator tags and `ManifestValidate()` (dify-plugin-daemon
`pkg/entities/plugin_entities/plugin_declaration.go`, `model_declaration.go`, `basic_type.go`,
`manifest_entities/{version,tags}.go`, asset checks in `pkg/plugin_packager/decoder/helper.go`) plus what the Python SDK
needs to start (`dify_plugin.core.plugin_registration`). A package that passes here is accepted by `dify plugin package`
and by the daemon's upload; see shared notes `dify-plugin.md` §3, §4, §8, §10.

Used by scripts/package.py and tests/plugin/test_manifest.py; also a CLI: `python scripts/manifest_check.py [ROOT]`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

LANGUAGES = ("en_US", "zh_Hans", "ja_JP", "pt_BR")
I18N_MAX = 1023  # I18nObject: en_US required, every value lt=1024 characters
VERSION_RE = re.compile(r"^\d{1,4}(\.\d{1,4}){2}(-\w{1,16})?$")
AUTHOR_RE = re.compile(r"^[a-z0-9_-]{1,64}$")  # ManifestValidate(): lowercase only (the SDK also allows upper case)
NAME_RE = re.compile(r"^[a-z0-9_-]{1,128}$")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
# manifest_entities/tags.go; "rag" exists only since daemon 0.3.0 (older daemons reject it).
PLUGIN_TAGS = frozenset(
    [
        "search",
        "image",
        "videos",
        "weather",
        "finance",
        "design",
        "travel",
        "social",
        "news",
        "medical",
        "productivity",
        "education",
        "business",
        "entertainment",
        "utilities",
        "agent",
        "rag",
        "other",
        "trigger",
    ]
)
ARCHES = frozenset({"amd64", "arm64"})
# Model types both the daemon and the SDK's ModelType enum know.
MODEL_TYPES = frozenset({"llm", "text-embedding", "rerank", "speech2text", "moderation", "tts", "text2img"})
CONFIGURATE_METHODS = frozenset({"predefined-model", "customizable-model"})
FORM_TYPES = frozenset({"text-input", "secret-input", "select", "radio", "switch"})
TEXT_FORM_TYPES = frozenset({"text-input", "secret-input"})
FIELD_KEYS = frozenset(
    {
        "variable",
        "label",
        "type",
        "required",
        "default",
        "options",
        "placeholder",
        "help",
        "url",
        "max_length",
        "show_on",
    }
)
MODEL_TYPE_VARIABLE = "__model_type"
MAX_FIELDS = 32
MAX_OPTIONS = 128
MAX_SHOW_ON = 16
MAX_LIST = 16  # supported_model_types, configurate_methods
# A model plugin may not declare any other kind of extension (ManifestValidate()).
OTHER_EXTENSIONS = ("tools", "endpoints", "agent_strategies", "datasources", "triggers")
PERMISSION_MODEL_KEYS = ("enabled", "llm", "text_embedding", "rerank", "tts", "speech2text", "moderation")


@dataclass
class Report:
    """Result of checking one plugin directory."""

    root: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)  # provider YAML path -> content
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def warn(self, where: str, message: str) -> None:
        self.warnings.append(f"{where}: {message}")


# ---- generic value checks ------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def check_string(report: Report, where: str, value: object, max_len: int, required: bool = True) -> bool:
    """A string of at most max_len characters (non-empty when required)."""
    if value is None:
        if required:
            report.error(where, "is required")
        return not required
    if not _is_str(value):
        report.error(where, f"must be a string, got {type(value).__name__} {value!r} (quote it in YAML)")
        return False
    if required and not value:
        report.error(where, "must not be empty")
        return False
    if len(value) > max_len:
        report.error(where, f"is {len(value)} characters, at most {max_len} allowed")
        return False
    return True


def check_i18n(report: Report, where: str, value: object, required: bool = True) -> None:
    """An I18nObject: en_US required, only known languages, every value a string below 1024 characters."""
    if value is None:
        if required:
            report.error(where, "is required (an object with at least en_US)")
        return
    if not isinstance(value, Mapping):
        report.error(where, f"must be an object of languages {LANGUAGES}, got {type(value).__name__}")
        return
    for key in value:
        if key not in LANGUAGES:
            report.error(where, f"unknown language {key!r} (allowed: {', '.join(LANGUAGES)})")
    check_string(report, f"{where}.en_US", value.get("en_US"), I18N_MAX)
    for language in LANGUAGES[1:]:
        if language in value:
            check_string(report, f"{where}.{language}", value[language], I18N_MAX, required=False)


def i18n_values(value: object) -> list[str]:
    return [v for v in value.values() if _is_str(v)] if isinstance(value, Mapping) else []


def is_url(value: str) -> bool:
    parsed = urlparse(value)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


def check_asset(report: Report, where: str, name: object) -> None:
    if check_string(report, where, name, 128) and not (report.root / "_assets" / str(name)).is_file():
        report.error(where, f"_assets/{name} does not exist")


def check_file(report: Report, where: str, relpath: object, max_len: int = 1024) -> None:
    if check_string(report, where, relpath, max_len) and not (report.root / str(relpath)).is_file():
        report.error(where, f"{relpath} does not exist")


# ---- manifest.yaml -------------------------------------------------------------------------------------------------


def check_version(report: Report, where: str, value: object) -> None:
    if check_string(report, where, value, 64) and not VERSION_RE.match(str(value)):
        report.error(where, f"{value!r} does not match {VERSION_RE.pattern}")


def check_created_at(report: Report, value: object) -> None:
    if isinstance(value, datetime):  # an unquoted YAML timestamp
        if value.tzinfo is None:
            report.error("created_at", "needs a time zone (RFC3339, e.g. 2026-01-01T00:00:00Z)")
        return
    if not _is_str(value) or not RFC3339_RE.match(value):
        report.error("created_at", f"must be an RFC3339 timestamp such as 2026-01-01T00:00:00Z, got {value!r}")


def check_identity(report: Report, manifest: Mapping[str, Any]) -> None:
    check_version(report, "version", manifest.get("version"))
    if manifest.get("type") != "plugin":
        report.error("type", f"must be 'plugin', got {manifest.get('type')!r}")
    author = manifest.get("author")
    if check_string(report, "author", author, 64):
        if not AUTHOR_RE.match(str(author)):
            report.error("author", f"{author!r} must match {AUTHOR_RE.pattern} (lowercase)")
        if UUID_RE.match(str(author)):
            report.error("author", "must not look like a UUID")
    name = manifest.get("name")
    if check_string(report, "name", name, 128) and not NAME_RE.match(str(name)):
        report.error("name", f"{name!r} must match {NAME_RE.pattern}")
    check_i18n(report, "label", manifest.get("label"))
    check_i18n(report, "description", manifest.get("description"))
    check_asset(report, "icon", manifest.get("icon"))
    if manifest.get("icon_dark") is not None:
        check_asset(report, "icon_dark", manifest.get("icon_dark"))
    check_created_at(report, manifest.get("created_at"))


def check_resource(report: Report, resource: object) -> None:
    if not isinstance(resource, Mapping):
        report.error("resource", "is required (memory in bytes)")
        return
    memory = resource.get("memory")
    if isinstance(memory, bool) or not isinstance(memory, int) or memory <= 0:
        report.error("resource.memory", f"must be a positive integer number of bytes, got {memory!r}")
    permission = resource.get("permission") or {}
    if not isinstance(permission, Mapping):
        report.error("resource.permission", "must be an object")
        return
    model = permission.get("model") or {}
    for key, value in model.items() if isinstance(model, Mapping) else ():
        if key not in PERMISSION_MODEL_KEYS or not isinstance(value, bool):
            report.error(f"resource.permission.model.{key}", "must be one of the known keys with a boolean value")
    storage = permission.get("storage")
    if isinstance(storage, Mapping) and "size" in storage:
        size = storage["size"]
        if isinstance(size, bool) or not isinstance(size, int) or not 1024 <= size <= 1073741824:
            report.error("resource.permission.storage.size", "must be an integer from 1024 to 1073741824")


def check_extensions(report: Report, plugins: object) -> list[str]:
    """plugins.models paths (each ≤ 128 characters, existing); returns the valid ones."""
    if not isinstance(plugins, Mapping):
        report.error("plugins", "is required (plugins.models: [provider YAML paths])")
        return []
    for kind in OTHER_EXTENSIONS:
        if plugins.get(kind):
            report.error(f"plugins.{kind}", "a model plugin may not declare other extensions")
    models = plugins.get("models")
    if not isinstance(models, list) or not models:
        report.error("plugins.models", "must list at least one provider YAML")
        return []
    valid = []
    for index, path in enumerate(models):
        where = f"plugins.models[{index}]"
        check_file(report, where, path, 128)
        if _is_str(path) and (report.root / path).is_file():
            valid.append(path)
    return valid


def check_meta(report: Report, meta: object) -> None:
    if not isinstance(meta, Mapping):
        report.error("meta", "is required")
        return
    check_version(report, "meta.version", meta.get("version"))
    arch = meta.get("arch")
    if not isinstance(arch, list) or not arch or any(a not in ARCHES for a in arch):
        report.error("meta.arch", f"must be a non-empty list of {sorted(ARCHES)}, got {arch!r}")
    runner = meta.get("runner")
    if not isinstance(runner, Mapping):
        report.error("meta.runner", "is required {language, version, entrypoint}")
    else:
        if runner.get("language") != "python":
            report.error("meta.runner.language", f"must be 'python', got {runner.get('language')!r}")
        check_string(report, "meta.runner.version", runner.get("version"), 128)
        entrypoint = runner.get("entrypoint")
        if check_string(report, "meta.runner.entrypoint", entrypoint, 256):
            check_file(report, "meta.runner.entrypoint", f"{str(entrypoint).replace('.', '/')}.py")
    minimum = meta.get("minimum_dify_version")
    if minimum is not None and not (_is_str(minimum) and re.match(r"^\d+(\.\d+){0,3}$", minimum)):
        report.error("meta.minimum_dify_version", f"must be a version string such as '1.0.0', got {minimum!r}")


def check_optional_fields(report: Report, manifest: Mapping[str, Any]) -> None:
    tags = manifest.get("tags")
    if tags is not None:
        if not isinstance(tags, list):
            report.error("tags", "must be a list")
        else:
            for tag in tags:
                if tag not in PLUGIN_TAGS:
                    report.error("tags", f"{tag!r} is not one of {sorted(PLUGIN_TAGS)}")
                elif tag == "rag":
                    report.warn("tags", "'rag' is rejected by plugin daemons older than 0.3.0")
    privacy = manifest.get("privacy")
    if privacy is not None and check_string(report, "privacy", privacy, 1024) and not is_url(str(privacy)):
        check_file(report, "privacy", privacy)
    repo = manifest.get("repo")
    if repo is not None and not (_is_str(repo) and is_url(repo)):
        report.error("repo", f"must be a URL, got {repo!r}")


def check_manifest(report: Report, manifest: Mapping[str, Any]) -> list[str]:
    """Check manifest.yaml; returns the provider YAML paths to check next."""
    check_identity(report, manifest)
    check_resource(report, manifest.get("resource"))
    check_meta(report, manifest.get("meta"))
    check_optional_fields(report, manifest)
    return check_extensions(report, manifest.get("plugins"))


# ---- provider YAML -------------------------------------------------------------------------------------------------


def check_show_on(report: Report, where: str, show_on: object) -> list[dict[str, str]]:
    if show_on is None:
        return []
    if not isinstance(show_on, list) or len(show_on) > MAX_SHOW_ON:
        report.error(where, f"must be a list of at most {MAX_SHOW_ON} {{variable, value}}")
        return []
    valid = []
    for index, item in enumerate(show_on):
        item_where = f"{where}[{index}]"
        if not isinstance(item, Mapping):
            report.error(item_where, "must be {variable, value}")
            continue
        ok = check_string(report, f"{item_where}.variable", item.get("variable"), 255)
        ok = check_string(report, f"{item_where}.value", item.get("value"), 255) and ok
        if ok:
            valid.append({"variable": item["variable"], "value": item["value"]})
    return valid


def check_options(report: Report, where: str, options: object) -> list[str]:
    """Options of a select/radio field; returns their values."""
    if not isinstance(options, list) or not options or len(options) > MAX_OPTIONS:
        report.error(where, f"must be a list of 1 to {MAX_OPTIONS} {{value, label}}")
        return []
    values = []
    for index, option in enumerate(options):
        option_where = f"{where}[{index}]"
        if not isinstance(option, Mapping):
            report.error(option_where, "must be {value, label, show_on?}")
            continue
        check_i18n(report, f"{option_where}.label", option.get("label"))
        if check_string(report, f"{option_where}.value", option.get("value"), 255):
            values.append(option["value"])
        check_show_on(report, f"{option_where}.show_on", option.get("show_on"))
    if len(set(values)) != len(values):
        report.error(where, f"duplicate option values {values}")
    return values


def check_field(report: Report, where: str, form: Mapping[str, Any]) -> list[str]:
    """One credential form field; returns its option values (empty for free-text fields)."""
    for key in form:
        if key not in FIELD_KEYS:
            report.error(where, f"unknown key {key!r} (allowed: {', '.join(sorted(FIELD_KEYS))})")
    check_string(report, f"{where}.variable", form.get("variable"), 255)
    check_i18n(report, f"{where}.label", form.get("label"))
    check_i18n(report, f"{where}.placeholder", form.get("placeholder"), required=False)
    check_i18n(report, f"{where}.help", form.get("help"), required=False)
    form_type = form.get("type")
    if form_type not in FORM_TYPES:
        report.error(f"{where}.type", f"must be one of {sorted(FORM_TYPES)}, got {form_type!r}")
    if "required" in form and not isinstance(form["required"], bool):
        report.error(f"{where}.required", "must be true or false")
    max_length = form.get("max_length", 0)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 0:
        report.error(f"{where}.max_length", "must be a non-negative integer")
    default = form.get("default")
    if default is not None:
        check_string(report, f"{where}.default", default, 255, required=False)
    values: list[str] = []
    if form_type in ("select", "radio"):
        values = check_options(report, f"{where}.options", form.get("options"))
        if _is_str(default) and values and default not in values:
            report.error(f"{where}.default", f"{default!r} is not one of the options {values}")
    elif form_type == "switch" and _is_str(default) and default.lower() not in ("true", "false"):
        report.error(f"{where}.default", "a switch default must be 'true' or 'false'")
    elif form.get("options"):
        report.error(f"{where}.options", f"only select and radio fields have options, not {form_type}")
    return values


def check_forms(report: Report, where: str, forms: object, model_types: Iterable[str]) -> None:
    """credential_form_schemas: ≤ 32 fields, unique variables, show_on referring to known fields and values."""
    if forms is None:
        return
    if not isinstance(forms, list) or len(forms) > MAX_FIELDS:
        report.error(where, f"must be a list of at most {MAX_FIELDS} fields")
        return
    options_by_variable: dict[str, list[str]] = {MODEL_TYPE_VARIABLE: sorted(model_types)}
    show_ons: list[tuple[str, list[dict[str, str]]]] = []
    for index, form in enumerate(forms):
        field_where = f"{where}[{index}]"
        if not isinstance(form, Mapping):
            report.error(field_where, "must be an object")
            continue
        variable = form.get("variable")
        if _is_str(variable):
            field_where = f"{where}[{index}]({variable})"
            if variable in options_by_variable:
                report.error(field_where, f"duplicate or reserved variable {variable!r}")
            options_by_variable[variable] = check_field(report, field_where, form)
        else:
            check_field(report, field_where, form)
        show_ons.append((field_where, check_show_on(report, f"{field_where}.show_on", form.get("show_on"))))
    for field_where, conditions in show_ons:
        for condition in conditions:
            choices = options_by_variable.get(condition["variable"])
            if choices is None:
                report.error(f"{field_where}.show_on", f"refers to unknown variable {condition['variable']!r}")
            elif choices and condition["value"] not in choices:
                report.error(f"{field_where}.show_on", f"{condition['value']!r} is not one of {choices}")


def check_provider_head(report: Report, where: str, provider: Mapping[str, Any]) -> None:
    check_string(report, f"{where}.provider", provider.get("provider"), 255)
    check_i18n(report, f"{where}.label", provider.get("label"))
    check_i18n(report, f"{where}.description", provider.get("description"), required=False)
    for key in ("icon_small", "icon_large", "icon_small_dark", "icon_large_dark"):
        icon = provider.get(key)
        check_i18n(report, f"{where}.{key}", icon, required=False)
        for language, name in icon.items() if isinstance(icon, Mapping) else ():
            check_asset(report, f"{where}.{key}.{language}", name)
    background = provider.get("background")
    if background is not None:
        check_string(report, f"{where}.background", background, 64)
    help_entry = provider.get("help")
    if help_entry is not None:
        if not isinstance(help_entry, Mapping):
            report.error(f"{where}.help", "must be {title, url}")
        else:
            check_i18n(report, f"{where}.help.title", help_entry.get("title"))
            check_i18n(report, f"{where}.help.url", help_entry.get("url"))


def check_enum_list(report: Report, where: str, values: object, allowed: frozenset[str]) -> list[str]:
    if not isinstance(values, list) or not values or len(values) > MAX_LIST:
        report.error(where, f"must be a non-empty list of at most {MAX_LIST} of {sorted(allowed)}")
        return []
    for value in values:
        if value not in allowed:
            report.error(where, f"{value!r} is not one of {sorted(allowed)}")
    if len(set(values)) != len(values):
        report.error(where, "has duplicates")
    return [v for v in values if v in allowed]


def check_python_sources(report: Report, where: str, extra: object) -> None:
    python = extra.get("python") if isinstance(extra, Mapping) else None
    if not isinstance(python, Mapping):
        report.error(f"{where}.extra.python", "is required {provider_source, model_sources}")
        return
    check_file(report, f"{where}.extra.python.provider_source", python.get("provider_source"))
    sources = python.get("model_sources")
    if not isinstance(sources, list) or not sources:
        report.error(f"{where}.extra.python.model_sources", "must list the model class files")
        return
    for index, source in enumerate(sources):
        check_file(report, f"{where}.extra.python.model_sources[{index}]", source)


def check_provider(report: Report, where: str, provider: Mapping[str, Any]) -> None:
    check_provider_head(report, where, provider)
    model_types = check_enum_list(
        report, f"{where}.supported_model_types", provider.get("supported_model_types"), MODEL_TYPES
    )
    methods = check_enum_list(
        report, f"{where}.configurate_methods", provider.get("configurate_methods"), CONFIGURATE_METHODS
    )
    if "models" in provider and not isinstance(provider["models"], Mapping):
        report.error(f"{where}.models", "must be a mapping of model types to {predefined, position}")
    provider_schema = provider.get("provider_credential_schema")
    if provider_schema is not None:
        forms = provider_schema.get("credential_form_schemas") if isinstance(provider_schema, Mapping) else None
        check_forms(report, f"{where}.provider_credential_schema.credential_form_schemas", forms, model_types)
    model_schema = provider.get("model_credential_schema")
    if model_schema is None:
        if "customizable-model" in methods:
            report.error(f"{where}.model_credential_schema", "is required for customizable-model")
    elif not isinstance(model_schema, Mapping) or not isinstance(model_schema.get("model"), Mapping):
        report.error(f"{where}.model_credential_schema", "must have model {label, placeholder}")
    else:
        check_i18n(report, f"{where}.model_credential_schema.model.label", model_schema["model"].get("label"))
        check_i18n(
            report,
            f"{where}.model_credential_schema.model.placeholder",
            model_schema["model"].get("placeholder"),
            required=False,
        )
        forms = model_schema.get("credential_form_schemas")
        check_forms(report, f"{where}.model_credential_schema.credential_form_schemas", forms, model_types)
    check_python_sources(report, where, provider.get("extra"))


# ---- whole plugin --------------------------------------------------------------------------------------------------


def check_plugin(root: Path | str) -> Report:
    """Check manifest.yaml and every provider YAML it lists, relative to the plugin root."""
    report = Report(root=Path(root))
    manifest_path = report.root / "manifest.yaml"
    if not manifest_path.is_file():
        report.error("manifest.yaml", "not found")
        return report
    try:
        manifest = load_yaml(manifest_path)
    except yaml.YAMLError as exc:
        report.error("manifest.yaml", f"invalid YAML: {exc}")
        return report
    if not isinstance(manifest, dict):
        report.error("manifest.yaml", "must be a mapping")
        return report
    report.manifest = manifest
    if not (report.root / "_assets").is_dir():
        report.error("_assets", "directory is required (the SDK scans it at start)")
    for path in check_manifest(report, manifest):
        try:
            provider = load_yaml(report.root / path)
        except yaml.YAMLError as exc:
            report.error(path, f"invalid YAML: {exc}")
            continue
        if not isinstance(provider, dict):
            report.error(path, "must be a mapping")
            continue
        report.providers[path] = provider
        check_provider(report, path, provider)
    return report


def required_files(report: Report) -> list[str]:
    """Files the package must contain for the plugin to install and start (relative POSIX paths)."""
    manifest = report.manifest
    files = {"manifest.yaml", "requirements.txt"}
    entrypoint = (manifest.get("meta") or {}).get("runner", {}).get("entrypoint")
    if _is_str(entrypoint):
        files.add(f"{entrypoint.replace('.', '/')}.py")
    for key in ("icon", "icon_dark"):
        if _is_str(manifest.get(key)):
            files.add(f"_assets/{manifest[key]}")
    privacy = manifest.get("privacy")
    if _is_str(privacy) and not is_url(privacy):
        files.add(privacy)
    for path, provider in report.providers.items():
        files.add(path)
        python = (provider.get("extra") or {}).get("python") or {}
        files.update(s for s in [python.get("provider_source"), *(python.get("model_sources") or [])] if _is_str(s))
        for key in ("icon_small", "icon_large", "icon_small_dark", "icon_large_dark"):
            files.update(f"_assets/{name}" for name in i18n_values(provider.get(key)))
    return sorted(files)


def translation_gaps(report: Report, languages: Iterable[str] = LANGUAGES) -> list[str]:
    """User-visible texts lacking one of the languages: manifest label/description, provider label/description/help
    title, model name label/placeholder, every field's label and help, text fields' placeholders, option labels."""
    wanted = tuple(languages)
    gaps: list[str] = []

    def need(where: str, value: object) -> None:
        present = value if isinstance(value, Mapping) else {}
        missing = [lang for lang in wanted if not (_is_str(present.get(lang)) and present.get(lang))]
        if missing:
            gaps.append(f"{where}: missing {', '.join(missing)}")

    need("manifest.label", report.manifest.get("label"))
    need("manifest.description", report.manifest.get("description"))
    for path, provider in report.providers.items():
        need(f"{path}.label", provider.get("label"))
        need(f"{path}.description", provider.get("description"))
        need(f"{path}.help.title", (provider.get("help") or {}).get("title"))
        model_schema = provider.get("model_credential_schema") or {}
        need(f"{path}.model.label", (model_schema.get("model") or {}).get("label"))
        need(f"{path}.model.placeholder", (model_schema.get("model") or {}).get("placeholder"))
        forms = [
            *(model_schema.get("credential_form_schemas") or []),
            *((provider.get("provider_credential_schema") or {}).get("credential_form_schemas") or []),
        ]
        for form in forms:
            where = f"{path}:{form.get('variable')}"
            need(f"{where}.label", form.get("label"))
            need(f"{where}.help", form.get("help"))
            if form.get("type") in TEXT_FORM_TYPES:
                need(f"{where}.placeholder", form.get("placeholder"))
            for option in form.get("options") or []:
                need(f"{where}.options[{option.get('value')}].label", option.get("label"))
    return gaps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a Dify plugin's manifest and provider YAML.")
    parser.add_argument("root", nargs="?", default=".", help="plugin directory (default: .)")
    parser.add_argument("--i18n", action="store_true", help=f"also require every text in {', '.join(LANGUAGES)}")
    args = parser.parse_args(argv)
    report = check_plugin(args.root)
    problems = report.errors + (translation_gaps(report) if args.i18n else [])
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"ok: {args.root} ({len(report.providers)} provider file(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
