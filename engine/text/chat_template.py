"""Chat templates: render a model's jinja2 chat template safely, with the conventions HF templates rely on.

A template is data downloaded from the internet: it runs in jinja2's immutable sandbox, so it cannot reach
Python internals or mutate the objects it is given. The environment mirrors transformers'
`apply_chat_template` (trim_blocks, lstrip_blocks, loopcontrols, a `tojson` that keeps non-ASCII text,
`raise_exception`, `strftime_now`, the `{% generation %}` marker).

The sandbox bounds neither time nor memory, and a render runs on the model's only worker thread, so every
render also has budgets (`_Budget`): operations (loop iterations, calls, filters, operators, literals), time,
characters printed or captured, the size of any one value, and everything built in all. The generated code
charges them through hooks, so a hostile template is stopped between two cheap steps; an operation that could
build too much in one step (`'x' * 10**10`, `2 ** 10**9`, `'%9999999999d' % 1`, `s.center(10**10)`, a join of
100,000 references to one long string) is refused before it runs. Sizes count a shared reference each time it
is reached, so lists of lists of one string cannot grow past the budget unnoticed.
"""

from __future__ import annotations

import functools
import json
import math
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from time import monotonic
from typing import Any, NoReturn

import jinja2
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.ext import Extension
from jinja2.runtime import LoopContext
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from engine.errors import BadRequestError, ModelLoadError
from engine.model_config import read_optional_json
from engine.paths import confined
from engine.text.messages import ChatMessage, ToolSpec

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


class TemplateError(BadRequestError):
    """The template refused the conversation (raise_exception) or failed while rendering it."""


# ---- budgets of one render
# Generous for real templates (Qwen2.5's and Llama 3.1's spend about 5 operations per message, Qwen3's 9, and
# build 2-3 times the message text, so conversations of thousands of turns stay far inside) while a hostile
# template meets one within a second.
OUTPUT_FLOOR = 1 << 20  # characters printed or captured in all, and the size of any one value, whatever the input…
OUTPUT_PER_INPUT = 8  # …plus this many per unit of input (messages, tools, special tokens, measured as below)
MEMORY_FLOOR = 16 << 20  # characters and items built by all operations together (bounds what can be alive)…
MEMORY_PER_INPUT = 64  # …plus this many per unit of input
OPS_FLOOR = 100_000  # loop iterations, calls, filters, operators and literals…
OPS_PER_MESSAGE = 50  # …plus this many per message and tool
TIME_BUDGET_SECONDS = 3.0  # the backstop for costs the other budgets do not see…
TIME_PER_MESSAGE = 0.0005  # …plus this per message and tool (real templates take ~0.1 ms per message)
MAX_INT_BITS = 4096  # `*` and `**` on integers (a template needs small counters, not 10**10**9)
MAX_TEMPLATE_CHARS = 1 << 20
ITEM = 16  # an item of a list, tuple or dict counts as 16 characters (a reference and a small object)


class _Budget:
    """What one render may still spend. Every hook the generated code calls charges it."""

    __slots__ = ("built", "deadline", "limit", "max_ops", "memory", "ops", "output", "seconds")

    def __init__(self, input_size: int, messages: int) -> None:
        self.limit = OUTPUT_FLOOR + OUTPUT_PER_INPUT * input_size
        self.memory = MEMORY_FLOOR + MEMORY_PER_INPUT * input_size
        self.max_ops = OPS_FLOOR + OPS_PER_MESSAGE * messages
        self.seconds = TIME_BUDGET_SECONDS + TIME_PER_MESSAGE * messages
        self.deadline = monotonic() + self.seconds
        self.ops = self.output = self.built = 0

    def tick(self) -> None:
        self.ops += 1
        if self.ops > self.max_ops:
            raise TemplateError(
                f"the chat template exceeded its operation budget: more than {self.max_ops:,} loop iterations, "
                "calls and operators"
            )
        if monotonic() > self.deadline:
            raise TemplateError(f"the chat template exceeded its time budget of {self.seconds:.3g} s")

    def produce(self, characters: int) -> None:
        self.output += characters
        if self.output > self.limit:
            raise TemplateError(f"the chat template exceeded its output budget of {self.limit:,} characters")

    def need(self, size: int, what: str) -> None:
        """Before (or right after) building a value of `size`: within the size and memory budgets."""
        if size > self.limit:
            _refuse(f"{what} would build more than {self.limit:,} characters or items")
        self.built += size
        if self.built > self.memory:
            raise TemplateError(
                f"the chat template exceeded its memory budget: more than {self.memory:,} characters or items "
                "built in all"
            )

    def checked(self, value: Any, what: str) -> Any:
        """`value`, a result just built, if it is within budget; an iterator is checked as it is read."""
        kind = type(value)
        if kind is str or kind is bytes:
            self.need(len(value), what)
        elif kind in _SCALARS:
            pass
        elif isinstance(value, Iterator):
            return self._bounded(value, what)
        else:
            self.need(_measure(value, self.limit)[0], what)
        return value

    def _bounded(self, items: Iterator[Any], what: str) -> Iterator[Any]:
        # Whatever reads this (join, list, a loop) holds at most the size budget: a lazy map over a range can
        # otherwise yield a long string 100,000 times into one join.
        total = 0
        for item in items:
            self.tick()
            size = _measure(item, self.limit)[0] + ITEM
            total += size
            if total > self.limit:
                self.need(total, what)
            self.need(size, what)
            yield item


def _refuse(what: str) -> NoReturn:
    raise TemplateError(f"the chat template exceeded its size budget: {what}")


_SCALARS = frozenset({int, float, bool, type(None)})
_ACTIVE: ContextVar[_Budget | None] = ContextVar("chat_template_budget", default=None)


def _current() -> _Budget:
    # No render under way: jinja2 folds constant expressions while compiling; hold those to the floor.
    return _ACTIVE.get() or _Budget(0, 0)


def _measure(value: Any, limit: int) -> tuple[int, int]:
    """(size, depth) of `value` as printed: characters of its text plus `ITEM` per element, counting a shared
    reference every time it is reached, and how deeply it nests. Stops once size passes `limit`, so the walk
    costs at most that many steps however large, shared or cyclic the value is."""
    size = depth = 0
    stack = [(value, 1)]
    while stack and size <= limit:
        item, level = stack.pop()
        if isinstance(item, str | bytes):
            size += len(item)
            continue
        if isinstance(item, int):
            size += 1 + item.bit_length() // 3  # ≥ its decimal digits
            continue
        if isinstance(item, Namespace):
            item = item._Namespace__attrs  # its repr prints every attribute
        if isinstance(item, dict):
            children: Iterable[Any] = (part for pair in item.items() for part in pair)
        elif isinstance(item, list | tuple | set | frozenset | _DICT_VIEWS):
            children = item
        else:  # scalars, Undefined, macros, ranges (lazy: a loop over one is counted per iteration)
            size += 1
            continue
        depth = max(depth, level)
        for child in children:
            size += ITEM
            if type(child) is str:
                size += len(child)
            else:
                stack.append((child, level + 1))
            if size > limit:
                break
    return size, depth


_DICT_VIEWS = type({}.keys()) | type({}.values()) | type({}.items())


def _size(value: Any, budget: _Budget) -> int:
    return len(value) if isinstance(value, str | bytes) else _measure(value, budget.limit)[0]


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0  # not a number: the call itself will fail


def _argument(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _largest(budget: _Budget, values: Iterable[Any]) -> int:
    return max((_size(value, budget) for value in values), default=0)


_DIGITS = re.compile(r"\d+")
_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d*)(?:\.(\*|\d*))?[hlL]?(.)", re.DOTALL)


def _percent_need(budget: _Budget, template: str | bytes, values: Any) -> int:
    """Most characters `template % values` can build: a field may repeat a value (`%(a)s%(a)s`) or pad to a
    width written in the template, so each field counts the largest value plus the largest width."""
    text = template.decode("latin-1") if isinstance(template, bytes) else template
    fields = width = 0
    for match in _PERCENT_FIELD.finditer(text):
        if match.group(3) == "%":
            continue
        if "*" in match.group(1, 2):
            _refuse("a `%` field takes its width from the arguments")
        fields += 1
        width = max(width, int(match.group(1) or 0), int(match.group(2) or 0))
    return len(text) + fields * (_largest(budget, values if isinstance(values, tuple) else (values,)) + width)


def _format_need(budget: _Budget, template: str, values: Iterable[Any]) -> int:
    """The same for `template.format(...)`; a width taken from an argument (`'{:{}}'`) is refused."""
    fields = width = 0
    for _, field, spec, _ in string.Formatter().parse(template):
        if field is None:
            continue
        if "{" in (spec or ""):
            _refuse("a format field takes its width from the arguments")
        fields += 1
        width = max([width, *(int(digits) for digits in _DIGITS.findall(spec or ""))])
    return len(template) + fields * (_largest(budget, values) + width)


def _replace_need(text: Any, old: Any, new: Any, count: Any = -1) -> int:
    size, old_size, new_size = (len(v) if isinstance(v, str | bytes) else 0 for v in (text, old, new))
    hits = size // max(old_size, 1) + 1
    return size + (min(hits, count) if isinstance(count, int) and count >= 0 else hits) * new_size


def _method_need(budget: _Budget, method: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    """Most characters a call of a str/bytes/int method can build when that can be more than its inputs
    hold; 0 for every other call (its result is checked afterwards)."""
    owner, name = getattr(method, "__self__", None), getattr(method, "__name__", "")
    wrapped = getattr(method, "__wrapped__", None)  # the sandbox's replacement for str.format / format_map
    if isinstance(getattr(wrapped, "__self__", None), str) and name in ("format", "format_map"):
        values = args[0].values() if name == "format_map" and args and isinstance(args[0], dict) else ()
        return _format_need(budget, wrapped.__self__, (*args, *kwargs.values(), *values))
    if isinstance(owner, str | bytes):
        if name in ("center", "ljust", "rjust", "zfill"):
            return max(len(owner), _int(_argument(args, kwargs, 0, "width", 0)))
        if name == "replace":
            return _replace_need(owner, *args[:3])
        if name == "join" and args:
            return _size(args[0], budget) + (len(args[0]) if isinstance(args[0], Sized) else 0) * len(owner)
        if name == "expandtabs":
            tabs = owner.count("\t" if isinstance(owner, str) else b"\t")
            return len(owner) + tabs * _int(_argument(args, kwargs, 0, "tabsize", 8))
        if name == "translate" and args and isinstance(args[0], dict):
            return len(owner) * (1 + _largest(budget, args[0].values()))
        if name == "hex":
            return len(owner) * (2 + _size(_argument(args, kwargs, 0, "sep", ""), budget))
    if isinstance(owner, int) and name == "to_bytes":
        return _int(_argument(args, kwargs, 0, "length", 1))
    return 0


# Filters whose result can be larger than their inputs, with the most each can build. Each takes the budget
# and then the filter's own arguments (after any context argument jinja2 passes first).
def _tojson_need(
    b: _Budget,
    value: Any,
    ensure_ascii: Any = False,
    indent: Any = None,
    separators: Any = None,
    sort_keys: Any = False,
) -> int:
    if indent is None and separators is None:
        return 0
    size, depth = _measure(value, b.limit)
    step = len(indent) if isinstance(indent, str) else _int(indent)
    return size * (1 + step * depth + _size(separators, b))  # each line indented to its depth


def _pprint_need(b: _Budget, value: Any) -> int:
    size, depth = _measure(value, b.limit)
    return size * (1 + depth)


def _indent_need(b: _Budget, s: Any, width: Any = 4, first: Any = False, blank: Any = False) -> int:
    lines = s.count("\n") + 1 if isinstance(s, str) else _size(s, b)
    return _size(s, b) + lines * (len(width) if isinstance(width, str) else _int(width))


def _join_need(b: _Budget, value: Any, d: Any = "", attribute: Any = None) -> int:
    return _size(value, b) + (len(value) if isinstance(value, Sized) else 0) * len(str(d))


def _sum_need(b: _Budget, iterable: Any, attribute: Any = None, start: Any = 0) -> int:
    if isinstance(start, int | float):
        return 0
    return _size(iterable, b) * (1 + (len(iterable) if isinstance(iterable, Sized) else 0))  # each + copies


def _wordwrap_need(
    b: _Budget,
    s: Any,
    width: Any = 79,
    break_long_words: Any = True,
    wrapstring: Any = None,
    break_on_hyphens: Any = True,
) -> int:
    return _size(s, b) * (1 + len(wrapstring or "\n"))


def _urlize_need(
    b: _Budget,
    value: Any,
    trim_url_limit: Any = None,
    nofollow: Any = False,
    target: Any = None,
    rel: Any = None,
    extra_schemes: Any = None,
) -> int:
    return _size(value, b) * (64 + _size(target, b) + _size(rel, b))  # each word may become a link


def _padding(b: _Budget, value: Any, count: Any, fill_with: Any) -> int:
    return _size(value, b) + _int(count) * (ITEM + _size(fill_with, b))  # batch / slice pad up to `count`


# Parameter names are the filters' own (a test compares them), so keyword arguments reach the same place.
_FILTER_NEEDS: dict[str, Callable[..., int]] = {
    "center": lambda b, value, width=80: max(_size(value, b), _int(width)),
    "indent": _indent_need,
    "replace": lambda b, s, old, new, count=None: _replace_need(s, old, new, -1 if count is None else count),
    "join": _join_need,
    "format": lambda b, value, *args, **kwargs: (
        _percent_need(b, value, kwargs or args) if isinstance(value, str) else 0
    ),
    "wordwrap": _wordwrap_need,
    "batch": lambda b, value, linecount, fill_with=None: _padding(b, value, linecount, fill_with),
    "slice": lambda b, value, slices, fill_with=None: _padding(b, value, slices, fill_with),
    "sum": _sum_need,
    "urlize": _urlize_need,
    "pprint": _pprint_need,
    "tojson": _tojson_need,
}
# These read their whole input before using it: a lazy one is listed first (through the checked iterator) so
# its length is known.
_LISTED_FIRST = frozenset({"join", "sum"})


def _budgeted_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    need = _FILTER_NEEDS.get(name)
    skip = 1 if hasattr(func, "jinja_pass_arg") else 0  # context, eval context or environment comes first
    what = f"the {name} filter"

    @functools.wraps(func)  # keeps jinja_pass_arg
    def run(*args: Any, **kwargs: Any) -> Any:
        budget = _current()
        budget.tick()
        if need is not None and len(args) > skip:
            if name in _LISTED_FIRST and not isinstance(args[skip], Sized):
                args = (*args[:skip], list(args[skip]), *args[skip + 1 :])
            budget.need(need(budget, *args[skip:], **kwargs), what)
        result = func(*args, **kwargs)
        return result if len(args) > skip and result is args[skip] else budget.checked(result, what)

    return run


class _CountedLoop:
    """A for loop's iterable, charging one operation per item; keeps `len` so `loop.length` works as before."""

    __slots__ = ("_budget", "_items")

    def __init__(self, items: Any, budget: _Budget) -> None:
        self._items = items
        self._budget = budget

    def __iter__(self) -> Iterator[Any]:
        for item in self._items:
            self._budget.tick()
            yield item

    def __len__(self) -> int:
        return len(self._items)


class _BudgetedCodeGenerator(CodeGenerator):
    """Routes through the environment's hooks what the sandbox does not intercept: each loop iteration, `~`,
    list/tuple/dict literals and template text (the sandbox already routes calls and chosen operators)."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in node.find_all(nodes.For):  # `for x in items` → `for x in environment.budget_loop(items)`
            hook = nodes.EnvironmentAttribute("budget_loop", lineno=loop.lineno)
            loop.iter = nodes.Call(hook, [loop.iter], [], None, None, lineno=loop.lineno)
        super().visit_Template(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # jinja2's own choice of join, handed to the hook so it can size the parts before joining them.
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.budget_concat({join}, (")
        for part in node.nodes:
            self.visit(part, frame)
            self.write(", ")
        self.write("))")

    def _literal(self, visit: Callable[[Any, Frame], None], node: nodes.Expr, frame: Frame) -> None:
        self.write("environment.budget_value(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self._literal(super().visit_List, node, frame)

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self._literal(super().visit_Dict, node, frame)

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx == "load":  # not a target such as `{% for a, b in … %}`
            self._literal(super().visit_Tuple, node, frame)
        else:
            super().visit_Tuple(node, frame)

    def _output_const_repr(self, group: Iterable[Any]) -> str:
        return f"environment.budget_output({super()._output_const_repr(group)})"


def _count_output(value: Any) -> Any:
    """jinja2's `finalize`: sees every `{{ expression }}` value before it is printed or captured."""
    budget = _current()
    budget.produce(_size(value, budget))
    return value


def _range(*args: int) -> range:
    numbers = range(*args)
    try:
        count = len(numbers)
    except OverflowError:
        count = MAX_RANGE + 1
    if count > MAX_RANGE:
        _refuse(f"range() of more than {MAX_RANGE:,} numbers")
    return numbers


class _BudgetedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BudgetedCodeGenerator

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_count_output, **options)
        self.globals["range"] = _range
        del self.globals["lipsum"]  # lorem ipsum of any length; no chat template needs it

    def wrap_filters(self) -> None:
        self.filters = {name: _budgeted_filter(name, func) for name, func in self.filters.items()}

    # Hooks the generated code calls.
    def budget_loop(self, items: Any) -> _CountedLoop:
        return _CountedLoop(items, _current())

    def budget_concat(self, join: Callable[[Iterable[Any]], str], parts: tuple[Any, ...]) -> str:
        budget = _current()
        budget.tick()
        budget.need(sum(_size(part, budget) for part in parts), "`~`")
        return join(parts)

    def budget_value(self, value: Any) -> Any:
        budget = _current()
        budget.tick()
        return budget.checked(value, "a literal")

    def budget_output(self, text: str) -> str:
        _current().produce(len(text))
        return text

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        budget = _current()
        budget.tick()
        sequences = str | bytes | list | tuple
        if operator == "*":
            if isinstance(left, int) and isinstance(right, sequences):
                left, right = right, left
            if isinstance(left, sequences) and isinstance(right, int):
                budget.need(_size(left, budget) * max(right, 0), "`*` repetition")
            elif (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > MAX_INT_BITS
            ):
                _refuse(f"`*` would build an integer of more than {MAX_INT_BITS} bits")
        elif operator == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and right > 0
                and abs(left) > 1
                and math.log2(abs(left)) * right > MAX_INT_BITS
            ):
                _refuse(f"`**` would build an integer of more than {MAX_INT_BITS} bits")
        elif operator == "+":
            if type(left) is str and type(right) is str:  # the common case, in every template
                budget.need(len(left) + len(right), "`+`")
            elif isinstance(left, sequences) and isinstance(right, sequences):
                budget.need(_size(left, budget) + _size(right, budget), "`+`")
        elif operator == "%" and isinstance(left, str | bytes):
            budget.need(_percent_need(budget, left, right), "`%` formatting")
        return self.binop_table[operator](left, right)

    def call(self, context: jinja2.runtime.Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _current()
        budget.tick()
        if isinstance(obj, LoopContext) and args:  # `loop(children)` in a recursive loop
            args = (_CountedLoop(args[0], budget), *args[1:])
        elif isinstance(getattr(obj, "__self__", None), str | bytes | int) or hasattr(obj, "__wrapped__"):
            if obj.__name__ == "join" and args and not isinstance(args[0], Sized):
                args = (list(args[0]), *args[1:])  # its length sizes the separators
            explicit = {k: v for k, v in kwargs.items() if k not in ("_loop_vars", "_block_vars")}
            budget.need(_method_need(budget, obj, args, explicit), f"calling {obj.__name__}")
        result = super().call(context, obj, *args, **kwargs)
        return budget.checked(result, "a call")


def _raise_exception(message: str) -> None:
    raise TemplateError(f"the chat template rejected the conversation: {message}")


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Like transformers: no HTML escaping, non-ASCII kept (jinja2's own tojson escapes <, >, & and ').
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    _current().need(32 * len(fmt), "strftime_now")  # %c prints 24 characters for 2
    return datetime.now().strftime(fmt)


class _GenerationMarker(Extension):
    """`{% generation %}…{% endgeneration %}` marks assistant text for training masks; rendering keeps the body."""

    tags = frozenset({"generation"})

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_keep", []), [], [], body).set_lineno(lineno)

    def _keep(self, caller: Any) -> str:
        return caller()


def _environment() -> _BudgetedEnvironment:
    env = _BudgetedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationMarker, "jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.wrap_filters()
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _token_text(value: Any) -> str | None:
    """tokenizer_config stores special tokens as text or as a serialized AddedToken ({"content": …})."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _select_template(raw: Any, directory: Path) -> tuple[str | None, str | None]:
    """(default template, tool-use template) from tokenizer_config's chat_template (text or named list)."""
    if isinstance(raw, str):
        return raw, None
    if isinstance(raw, list):
        named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
        default = named.get("default")
        tool_use = named.get("tool_use")
        return (default if isinstance(default, str) else None), (tool_use if isinstance(tool_use, str) else None)
    if raw is not None:
        raise ModelLoadError("model_path", f"chat_template in {directory / 'tokenizer_config.json'} is not text")
    return None, None


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    tool_source: str | None
    special_tokens: tuple[tuple[str, str], ...]  # (name, text) for bos_token, eos_token, …

    @classmethod
    def load(cls, directory: Path) -> ChatTemplate | None:
        """The model's template: chat_template.jinja wins over tokenizer_config.json (as in transformers).
        None when the model has no template (a base model: use completion mode)."""
        config = read_optional_json(directory / "tokenizer_config.json")
        default, tool_use = _select_template(config.get("chat_template"), directory)
        jinja_file = directory / "chat_template.jinja"
        if jinja_file.is_file():
            try:
                default = confined(jinja_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                raise ModelLoadError(
                    "model_path", f"{jinja_file.name} in {directory} could not be read as UTF-8"
                ) from None
        if default is None and tool_use is None:
            return None
        longest = max(len(default or ""), len(tool_use or ""))
        if longest > MAX_TEMPLATE_CHARS:  # compiling runs on the worker too; real templates are a few KB
            raise ModelLoadError(
                "model_path", f"the chat template is {longest:,} characters; at most {MAX_TEMPLATE_CHARS:,} are read"
            )
        tokens = tuple((key, text) for key in SPECIAL_TOKEN_KEYS if (text := _token_text(config.get(key))) is not None)
        template = cls(default or tool_use or "", tool_use, tokens)
        template.compile()  # a syntax error is a load error, not a per-request one
        return template

    def compile(self, tools: bool = False) -> jinja2.Template:
        source = self.tool_source if tools and self.tool_source else self.source
        try:
            return _compiled(source)
        except jinja2.TemplateSyntaxError as error:
            raise ModelLoadError(
                "model_path", f"the chat template has a syntax error on line {error.lineno}: {error.message}"
            ) from None
        except RecursionError:
            raise ModelLoadError("model_path", "the chat template nests too deeply to compile") from None

    @property
    def accepts_tools(self) -> bool:
        """True when the template reads a `tools` variable (so tool definitions reach the model)."""
        source = self.tool_source or self.source
        env = _environment()
        try:
            return "tools" in meta.find_undeclared_variables(env.parse(source))
        except jinja2.TemplateSyntaxError:
            return False

    def render(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        add_generation_prompt: bool = True,
        options: Mapping[str, Any] | None = None,
    ) -> str:
        """`options`: extra template variables a request sets (enable_thinking)."""
        template = self.compile(bool(tools))
        context: dict[str, Any] = dict(self.special_tokens)
        context.update(
            messages=[m.as_template_dict() for m in messages],
            tools=[t.as_template_dict() for t in tools] or None,
            add_generation_prompt=add_generation_prompt,
        )
        context.update(options or {})
        budget = _Budget(_measure(context, 1 << 62)[0], len(messages) + len(tools))
        active = _ACTIVE.set(budget)
        try:
            return template.render(**context)
        except BadRequestError:
            raise
        except jinja2.exceptions.SecurityError:
            raise TemplateError("the chat template tried an operation the sandbox forbids") from None
        except Exception as error:  # a template bug for this conversation: say so, without a traceback
            raise TemplateError(
                f"the chat template failed on this conversation: {type(error).__name__}: {error}"
            ) from None
        finally:
            _ACTIVE.reset(active)


_CACHE: dict[str, jinja2.Template] = {}


def _compiled(source: str) -> jinja2.Template:
    template = _CACHE.get(source)
    if template is None:
        template = _environment().from_string(source)
        _CACHE[source] = template
    return template


def completion_prompt(messages: Sequence[ChatMessage]) -> str:
    """Completion mode (base models, no template): the messages' text, in order."""
    return "\n".join(message.text() for message in messages)
