"""The parameters a chat model shows in Dify's UI, as data: name, type, label, help, range, and where the default
comes from (the model's generation_config.json through SamplingParams, or the context for max_tokens)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from dify_plugin.entities import I18nObject
from dify_plugin.entities.model import ParameterRule, ParameterType

from engine.generation.sampling import SamplingParams


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter of the model in Dify's UI. `default` names the SamplingParams field whose value (from the
    model's generation_config.json) is the default; max_tokens' default and upper bound come from the context."""

    name: str
    kind: ParameterType
    label: str
    help: str
    low: float | None
    high: float | None
    precision: int | None = None
    default: str | None = None
    options: tuple[str, ...] = ()
    # Which models show it (a ModelTraits flag): "" every model; "structured_output", "thinks", "thinking_switch".
    shown_for: str = ""


_F, _I = ParameterType.FLOAT, ParameterType.INT
PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec(
        "temperature",
        _F,
        "Temperature",
        "Randomness; 0 always picks the most likely token.",
        0.0,
        2.0,
        2,
        "temperature",
    ),
    ParameterSpec(
        "top_p",
        _F,
        "Top P",
        "Sample from the smallest set of tokens whose probability reaches P.",
        0.01,
        1.0,
        2,
        "top_p",
    ),
    ParameterSpec(
        "top_k", _I, "Top K", "Sample from the K most likely tokens; 0 turns it off.", 0, 1000, None, "top_k"
    ),
    ParameterSpec(
        "min_p", _F, "Min P", "Drop tokens less likely than this fraction of the best one.", 0.0, 1.0, 2, "min_p"
    ),
    ParameterSpec(
        "presence_penalty",
        _F,
        "Presence penalty",
        "Penalise tokens already generated (once).",
        -2.0,
        2.0,
        2,
        "presence_penalty",
    ),
    ParameterSpec(
        "frequency_penalty",
        _F,
        "Frequency penalty",
        "Penalise tokens by how often they were generated.",
        -2.0,
        2.0,
        2,
        "frequency_penalty",
    ),
    ParameterSpec(
        "repetition_penalty",
        _F,
        "Repetition penalty",
        "Divide the scores of tokens seen in the prompt or output (1: off).",
        0.5,
        2.0,
        2,
        "repetition_penalty",
    ),
    ParameterSpec("seed", _I, "Seed", "Same seed and parameters give the same answer.", 0, 2**31 - 1),
    ParameterSpec("max_tokens", _I, "Max tokens", "Most tokens to generate (bounded by the context window).", 1, None),
    ParameterSpec(
        "response_format",
        ParameterType.STRING,
        "Response format",
        "json_object: any JSON object; json_schema: valid against the json_schema parameter. The output is "
        "constrained token by token, so it always parses.",
        None,
        None,
        options=("text", "json_object", "json_schema"),
        shown_for="structured_output",
    ),
    ParameterSpec(
        "json_schema",
        ParameterType.TEXT,
        "JSON schema",
        "The JSON schema the answer must be valid against (with response_format json_schema).",
        None,
        None,
        shown_for="structured_output",
    ),
    ParameterSpec(
        "enable_thinking",
        ParameterType.BOOLEAN,
        "Thinking",
        "Let the model think (in a <think> block) before it answers.",
        None,
        None,
        shown_for="thinking_switch",
    ),
    ParameterSpec(
        "thinking_budget",
        _I,
        "Thinking budget",
        "Most tokens the model may think for; the <think> block is then closed.",
        0,
        None,
        shown_for="thinks",
    ),
)
# The request values laid over the model's sampling defaults.
SAMPLING_PARAMETERS = tuple(field.name for field in fields(SamplingParams))


def _rule(spec: ParameterSpec, default: object, high: float | None) -> ParameterRule:
    return ParameterRule(
        name=spec.name,
        label=I18nObject(en_US=spec.label),
        type=spec.kind,
        help=I18nObject(en_US=spec.help),
        required=False,
        default=default,
        min=spec.low,
        max=high,
        precision=spec.precision,
        options=list(spec.options),
    )


def parameter_rules(
    defaults: SamplingParams, max_tokens_default: int, context: int, shown: frozenset[str] = frozenset()
) -> list[ParameterRule]:
    """The rules of a model whose files support the features in `shown` (names of `shown_for`)."""
    rules = []
    for spec in PARAMETERS:
        if spec.shown_for and spec.shown_for not in shown:
            continue
        if spec.name == "max_tokens":
            rules.append(_rule(spec, max_tokens_default, context))
        else:
            rules.append(_rule(spec, getattr(defaults, spec.default) if spec.default else None, spec.high))
    return rules
