"""Chat templates: transformers' conventions, in a sandbox a hostile template cannot escape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import BadRequestError, ModelLoadError
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
