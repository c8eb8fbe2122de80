"""Chat templates: transformers' conventions, in a sandbox a hostile template cannot escape."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import BadRequestError, ModelLoadError
from engine.text import chat_template
from engine.text.chat_template import ChatTemplate, TemplateError, completion_prompt
from engine.text.messages import ChatMessage, ContentPart, ToolCall, ToolSpec

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "tiny-qwen2-decoder"
EXPECTED = json.loads((FIXTURE / "expected_greedy.json").read_text(encoding="utf-8"))


def write_model(tmp_path: Path, template: str, **config: object) -> Path:
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": template, "bos_token": "<s>", "eos_token": {"content": "</s>"}, **config})
    )
    return tmp_path


def test_renders_exactly_what_transformers_rendered() -> None:
    template = ChatTemplate.load(FIXTURE)
    assert template is not None and template.accepts_tools
    for case in EXPECTED["cases"]:
        if case.get("tools"):
            continue  # the stored tool definition has sorted keys; covered in test_generation_engine
        messages = [ChatMessage(m["role"], m["content"]) for m in case["messages"]]
        assert template.render(messages) == case["prompt"]


def test_tool_calls_and_tool_results_reach_the_template() -> None:
    template = ChatTemplate.load(FIXTURE)
    assert template is not None
    tool = ToolSpec("get_weather", "Weather.", {"type": "object", "properties": {"city": {"type": "string"}}})
    messages = [
        ChatMessage("user", "Weather in Paris?"),
        ChatMessage("assistant", "", (ToolCall("c1", "get_weather", '{"city": "Paris"}'),)),
        ChatMessage("tool", '{"temperature": 18}', tool_call_id="c1"),
    ]
    text = template.render(messages, [tool])
    assert '"name": "get_weather"' in text and "<tools>" in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert '<tool_response>\n{"temperature": 18}\n</tool_response>' in text
    assert text.endswith("<|im_start|>assistant\n")


def test_conventions_bos_eos_tojson_unicode_strftime_generation(tmp_path: Path) -> None:
    source = (
        "{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content | tojson }}"
        "{% generation %}!{% endgeneration %}{% endfor %}{{ eos_token }}"
        "{% if add_generation_prompt %}[{{ strftime_now('%Y') | length }}]{% endif %}"
    )
    template = ChatTemplate.load(write_model(tmp_path, source))
    assert template is not None and not template.accepts_tools
    text = template.render([ChatMessage("user", "Ça <b> 👋")])
    assert text == 'user:"Ça <b> 👋"!</s>[4]'.join(["<s>", ""])


def test_list_content_text_parts_are_joined_and_images_refused() -> None:
    message = ChatMessage("user", (ContentPart("text", "one"), ContentPart("text", "two")))
    assert message.text() == "one\ntwo"
    with pytest.raises(BadRequestError, match="image content is not supported"):
        ChatMessage("user", (ContentPart("text", "x"), ContentPart("image"))).text()
    with pytest.raises(BadRequestError, match="audio"):
        completion_prompt([ChatMessage("user", (ContentPart("audio"),))])


def test_raise_exception_is_a_bad_request(tmp_path: Path) -> None:
    source = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}"
    template = ChatTemplate.load(write_model(tmp_path, source))
    assert template is not None
    with pytest.raises(TemplateError, match="must start with user"):
        template.render([ChatMessage("assistant", "hi")])


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.append(1) }}",
        "{{ cycler.__init__.__globals__.os }}",
    ],
)
def test_the_sandbox_blocks_python_internals_and_mutation(tmp_path: Path, source: str) -> None:
    template = ChatTemplate.load(write_model(tmp_path, source))
    assert template is not None
    with pytest.raises(TemplateError):
        template.render([ChatMessage("user", "hi")])


def test_chat_template_jinja_file_wins_and_named_lists_are_understood(tmp_path: Path) -> None:
    write_model(
        tmp_path, [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T{{ tools | length }}"}]
    )
    template = ChatTemplate.load(tmp_path)
    assert template is not None
    assert template.render([ChatMessage("user", "x")]) == "D"
    assert template.render([ChatMessage("user", "x")], [ToolSpec("f", "", {})]) == "T1"
    (tmp_path / "chat_template.jinja").write_text("J")
    assert ChatTemplate.load(tmp_path).render([ChatMessage("user", "x")]) == "J"  # type: ignore[union-attr]


def test_no_template_and_syntax_errors(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text("{}")
    assert ChatTemplate.load(tmp_path) is None
    write_model(tmp_path, "{% for %}")
    with pytest.raises(ModelLoadError, match="syntax error"):
        ChatTemplate.load(tmp_path)


def test_unknown_role_is_refused() -> None:
    template = ChatTemplate.load(FIXTURE)
    assert template is not None
    with pytest.raises(BadRequestError, match="role"):
        template.render([ChatMessage("narrator", "x")])


# ---- budgets: a hostile template ends quickly with an error naming the budget, a real one renders as before

# Each renders in a child process with 1 GiB of address space and 20 s of time, so a template that escapes
# its budgets fails the test (MemoryError, timeout) instead of taking the test machine down with it.
HOSTILE = {
    "nested loops": ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", "operation"),
    "macro call tree": (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
        "operation",
    ),
    "string repetition": ("{{ 'x' * 10**10 }}", "size"),
    "list repetition into join": ("{% set b = 'y' * 1000000 %}{{ ([b] * 100000) | join }}", "size"),
    "integer power": ("{{ 2 ** (10**9) }}", "size"),
    "huge range joined": ("{{ range(10**9) | join }}", "size"),
    "padding filter": ("{{ 'x' | center(10**10) }}", "size"),
    "padding method": ("{{ 'x'.ljust(10**10) }}", "size"),
    "printf width": ("{{ '%10000000000d' % 1 }}", "size"),
    "format width": ("{{ '{:>10000000000}'.format('x') }}", "size"),
    "format repeating one argument": ("{% set b = 'y' * 100000 %}{{ ('{0}' * 10000).format(b) }}", "size"),
    "replace amplifying": ("{% set b = 'y' * 10000 %}{{ b.replace('', b) }}", "size"),
    "lazy map into join": ("{% set b = 'y' * 1000000 %}{{ range(100000) | map('replace', '', b) | join }}", "size"),
    "doubling with ~": (
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        "size",
    ),
    "doubling with +": (
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
        "size",
    ),
    "nested literals sharing one string": (
        "{% set a = ['x' * 100000] %}" + "{% set a = [a, a] %}" * 40 + "{{ a == a[0:] }}{{ a }}",
        "size",
    ),
    "argument doubling through recursion": (
        "{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ f('x', 64) }}",
        "size",
    ),
    "template text captured in a loop": (
        "{% set x %}{% for i in range(100000) %}" + "Z" * 10000 + "{% endfor %}{% endset %}{{ x | length }}",
        "output",
    ),
    "printed output flood": ("{% for i in range(100000) %}{{ 'abcdefghij' * 1000 }}{% endfor %}", "output"),
    "many large values kept": (
        "{% set ns = namespace() %}"
        + "".join(f"{{% set ns.a{i} = 'x' * 1000000 ~ {i} %}}" for i in range(200))
        + "{{ ns.a0 | length }}",
        "memory",
    ),
    "tojson indentation": ("{{ [[['x']]] | tojson(indent=10**9) }}", "size"),
}

RUNNER = """
import json, resource, signal, sys, time
from engine.text.chat_template import ChatTemplate, TemplateError
from engine.text.messages import ChatMessage
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
def timeout(*_):
    raise TimeoutError("no budget stopped it within 20 s")
signal.signal(signal.SIGALRM, timeout)
for name, source in json.loads(sys.stdin.read()).items():
    started = time.monotonic()
    signal.alarm(20)
    try:
        ChatTemplate(source, None, ()).render([ChatMessage("user", "hi")])
        outcome = "rendered"
    except TemplateError as error:
        outcome = str(error)
    except BaseException as error:
        outcome = f"{type(error).__name__}: {error}"
    signal.alarm(0)
    print(json.dumps({"name": name, "outcome": outcome, "seconds": time.monotonic() - started}), flush=True)
"""


@pytest.fixture(scope="module")
def hostile_outcomes() -> dict[str, dict[str, Any]]:
    sources = {name: source for name, (source, _) in HOSTILE.items()}
    done = subprocess.run(
        [sys.executable, "-c", RUNNER], input=json.dumps(sources), capture_output=True, text=True,
        cwd=Path(__file__).resolve().parents[2], timeout=20 * len(HOSTILE) + 60, check=False,
    )  # fmt: skip
    outcomes = [json.loads(line) for line in done.stdout.splitlines()]
    return {outcome["name"]: outcome for outcome in outcomes}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_template_ends_quickly_naming_the_budget(hostile_outcomes: dict, name: str) -> None:
    outcome = hostile_outcomes.get(name, {"outcome": "the child process died (memory?)", "seconds": None})
    budgets = ("operation", "time") if HOSTILE[name][1] == "operation" else (HOSTILE[name][1],)  # a slow machine
    assert outcome["outcome"].startswith(tuple(f"the chat template exceeded its {b} budget" for b in budgets)), outcome
    assert outcome["seconds"] < 3.5  # the time budget is 3 s; most stop within milliseconds


def plain_render(template: ChatTemplate, messages: list[ChatMessage], tools: list[ToolSpec]) -> str:
    """The same template in the environment without budgets (what rendering did before them)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[chat_template._GenerationMarker, "jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = chat_template._tojson
    env.globals["raise_exception"] = chat_template._raise_exception
    context: dict[str, Any] = dict(template.special_tokens)
    context.update(
        messages=[m.as_template_dict() for m in messages],
        tools=[t.as_template_dict() for t in tools] or None,
        add_generation_prompt=True,
    )
    return env.from_string(template.tool_source if tools and template.tool_source else template.source).render(
        **context
    )


def long_conversation(turns: int) -> list[ChatMessage]:
    messages = [ChatMessage("system", "You are a helpful assistant. 🌍")]
    for i in range(turns):
        messages.append(ChatMessage("user", f"Question {i}: what is the weather in city {i}? Ça va? " * 3))
        if i % 3 == 0:
            call = ToolCall(f"c{i}", "get_weather", json.dumps({"city": f"city {i}", "unit": "C"}))
            messages.append(ChatMessage("assistant", "", (call,)))
            messages.append(ChatMessage("tool", json.dumps({"temperature": i}), tool_call_id=f"c{i}"))
        messages.append(ChatMessage("assistant", f"<think>Let me think {i}.</think>\n\nIt is sunny in city {i}. " * 2))
    return messages


WEATHER = ToolSpec(
    "get_weather",
    "Current weather for a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
        "required": ["city"],
    },
)

# The constructs popular templates use (Qwen3: a namespace found by a reverse scan, split/strip of <think>;
# Llama 3.1: tojson(indent=4), trim, `in` tests; Mistral/Gemma: macros, selectattr, join, loop helpers, `%`
# and `.format`), in one template written for this test.
CONSTRUCTS = """
{%- macro render_tools(tools) -%}
{%- for tool in tools %}{{ tool | tojson(indent=4) }}{{ '\\n' if not loop.last }}{% endfor -%}
{%- endmacro -%}
{%- set ns = namespace(last_user=messages | length - 1, count=0, names=[]) -%}
{%- for message in messages[::-1] %}{% if message.role == 'user' and ns.last_user == messages | length - 1 %}
{%- set ns.last_user = (messages | length - 1) - loop.index0 %}{% endif %}{% endfor -%}
{{ bos_token }}{% if tools %}<tools>{{ render_tools(tools) }}</tools>{% endif %}
{%- for message in messages %}{% set ns.count = ns.count + 1 %}
{%- set content = message.content | trim %}
{%- if message.role == 'assistant' and '</think>' in content %}
{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') %}
{%- set content = content.split('</think>')[-1].lstrip('\\n') %}
{%- if loop.index0 > ns.last_user %}<think>{{ reasoning }}</think>{% endif %}{% endif %}
{{- '[%s|%d] ' % (message.role, loop.index) }}{{ '{}: {}'.format(loop.cycle('odd', 'even'), content) }}
{%- for call in message.tool_calls or [] %}{% set ns.names = ns.names + [call.function.name] %}
<call>{{ call.function.name ~ ' ' ~ call.function.arguments | tojson }}</call>{% endfor %}
{%- if 'tool_call_id' in message %} (for {{ message.tool_call_id }}){% endif %}{{ eos_token }}
{% endfor -%}
{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='role') | list | length }} user turns,
{{ ns.names | unique | join(', ') }}; {{ (messages | map(attribute='role') | list)[:3] | join('/') | upper }}
{%- set summary %}{{ ns.count }} messages{% endset %} {{ summary | center(30) }}
{%- if add_generation_prompt %}{% generation %}<assistant>{% endgeneration %}{% endif %}
"""


# Loop helpers and operators whose hooks must not change a result (recursive loops, loop.length on a filtered
# loop, break/continue, else, formatting, sums, sorts, globals).
LOOPS = """
{%- set tree = [{'n': 'a', 'kids': [{'n': 'b', 'kids': []}, {'n': 'c', 'kids': [{'n': 'd', 'kids': []}]}]}] -%}
{%- for node in tree recursive %}[{{ loop.depth }}{{ node.n }}{{ loop(node.kids) }}]{% endfor %}
{%- for m in messages if m.role == 'user' %}{{ loop.index }}/{{ loop.length }}/{{ loop.revindex }}{{ '!' if loop.last }}
{%- if loop.changed(m.role) %}C{% endif %}{% if loop.index > 3 %}{% break %}{% endif %}{% endfor %}
{%- for x in [] %}no{% else %}empty{% endfor %}
{%- for k, v in messages[0].items() %}{{ k }}={{ v | length }};{% endfor %}
{%- for c in messages[1].content[:20] %}{% if c == ' ' %}{% continue %}{% endif %}{{ c }}{% endfor %}
{{ "%-10s|%5.2f" % ('x', 3.14159) }} {{ '{0:>8}|{1!r}'.format('y', 'z') }} {{ '%(a)s' % {'a': 1} }}
{{ messages[-1].content | wordwrap(20) | indent(2) }} {{ 'a,b'.split(',') | reverse | join }} {{ range(5) | sum }}
{{ [3, 1, 2] | sort | list }} {{ dict(a=1) | tojson }} {{ cycler('x', 'y').next() }} {{ 2 ** 10 }} {{ 'ab' * 3 }}
"""


@pytest.mark.parametrize("source", ["fixture", "constructs", "loops"])
@pytest.mark.parametrize("turns", [3, 300])
def test_real_templates_render_exactly_as_without_budgets(tmp_path: Path, source: str, turns: int) -> None:
    sources = {"constructs": CONSTRUCTS, "loops": LOOPS}
    template = ChatTemplate.load(FIXTURE if source == "fixture" else write_model(tmp_path, sources[source]))
    assert template is not None
    messages = long_conversation(turns)
    for tools in ([WEATHER], []):
        assert template.render(messages, tools) == plain_render(template, messages, tools)


def test_a_long_conversation_renders_within_budget_and_quickly() -> None:
    template = ChatTemplate.load(FIXTURE)
    assert template is not None
    messages = long_conversation(3000)  # 8,001 messages
    started = time.monotonic()
    text = template.render(messages, [WEATHER])
    assert time.monotonic() - started < 3.0
    assert text.count("<|im_start|>user") == 4000


def test_budgets_are_per_render(tmp_path: Path) -> None:
    hostile = ChatTemplate.load(write_model(tmp_path, "{% for i in range(100000) %}{% endfor %}" * 3))
    assert hostile is not None
    with pytest.raises(TemplateError, match="operation budget"):
        hostile.render([ChatMessage("user", "hi")])
    template = ChatTemplate.load(FIXTURE)
    assert template is not None
    for _ in range(3):  # each render starts with a full budget
        template.render(long_conversation(300), [WEATHER])


def test_size_rules_know_each_filter_by_its_own_parameter_names() -> None:
    """Keyword arguments (`batch(linecount=…)`) must reach the same rule as positional ones."""
    filters = chat_template._environment().filters
    for name, need in chat_template._FILTER_NEEDS.items():
        base = inspect.unwrap(filters[name])
        names = list(inspect.signature(base).parameters)[1 if hasattr(base, "jinja_pass_arg") else 0 :]
        assert list(inspect.signature(need).parameters)[1:] == names, name


def test_oversized_or_too_deeply_nested_templates_are_load_errors(tmp_path: Path) -> None:
    write_model(tmp_path, "x" * (chat_template.MAX_TEMPLATE_CHARS + 1))
    with pytest.raises(ModelLoadError, match="at most 1,048,576 are read"):
        ChatTemplate.load(tmp_path)
    write_model(tmp_path, "{{" + "(" * 5000 + "1" + ")" * 5000 + "}}")
    with pytest.raises(ModelLoadError, match="nests too deeply"):
        ChatTemplate.load(tmp_path)
