"""The ``<tool_call>`` format (Qwen2.5's chat template): written into the history, parsed out of answers.

A call is ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``.
:func:`tool_call_text` writes an earlier ``AIMessage``'s calls that way;
:func:`parse_tool_calls` reads an answer's blocks back as LangChain
``ToolCall``\\ s (fresh ``call_...`` ids) and ``InvalidToolCall``\\ s (with the
reason), and, for the bound tools only, the same JSON written without the tags.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import InvalidToolCall, ToolCall
from langchain_core.messages.tool import invalid_tool_call, tool_call

from l2reason.errors import ConfigError

OPEN = "<tool_call>"
_TOOL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_FENCE = re.compile(r"```(?:json)?[ \t]*\n?(.*?)```", re.DOTALL)


def call_id() -> str:
    """A fresh tool-call id (``call_`` and 24 hex digits, like OpenAI's)."""
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_call_text(call: dict[str, Any], index: int) -> str:
    """One tool call (``{"name", "args"}``) of message ``index`` as Qwen's chat template writes it.

    Raises:
        ConfigError: no name, or arguments that are not a JSON object of finite values (NaN and infinity are
            not JSON: the model would be shown a call it could never write back).
    """
    name, args = call.get("name"), call.get("args")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"message {index}: a tool call has no name ({str(call)[:200]})")
    args = {} if args is None else args
    if not isinstance(args, dict):
        raise ConfigError(
            f"message {index}: the arguments of tool call {name!r} must be a JSON object, got {type(args).__name__}"
        )
    try:
        body = json.dumps({"name": name, "arguments": args}, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"message {index}: the arguments of tool call {name!r} are not JSON ({e}); give a JSON object of "
            "strings, finite numbers, booleans, null, lists and objects"
        ) from e
    return f"<tool_call>\n{body}\n</tool_call>"


class _NotJSON(ValueError):
    """A value Python's JSON reader takes but JSON has not: NaN, Infinity, a number too large for a float."""


def _no_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise _NotJSON(f"the number {text[:40]} is too large for a float")
    return x


#: strict JSON: NaN, Infinity and numbers that overflow to infinity are errors, as in every other JSON reader
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


def _decode_call(body: str, closed: bool) -> tuple[dict[str, Any] | None, str, str]:
    """One ``<tool_call>`` body as ``(call, error, rest)``: ``call`` is ``{"name", "args"}`` or None with
    ``error``; ``rest`` is text after the JSON object of an unclosed block."""
    s = body.strip()
    try:
        obj, end = _DECODER.raw_decode(s)
    except ValueError as e:  # JSONDecodeError, or a value JSON has not (_NotJSON)
        return None, f"not JSON: {e}", ""
    rest = s[end:]
    if closed and rest.strip():
        return None, f"text after the JSON object: {rest.strip()[:40]!r}", ""
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}", ""
    name, args = obj.get("name"), obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(name, str) or not name:
        return None, "no 'name' string", ""
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = _DECODER.decode(args) if args.strip() else {}
        except ValueError as e:
            return None, f"'arguments' is a string that is not JSON: {e}", ""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None, f"'arguments' must be a JSON object, got {type(args).__name__}", ""
    return {"name": name, "args": args}, "", rest


def parse_tool_calls(
    text: str, names: Sequence[str] | None = None
) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """Split a model answer into its text and Qwen-style tool calls.

    Every ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` block is
    a :class:`ToolCall` with a fresh id; a block that is not such JSON is an
    :class:`InvalidToolCall` (its body kept as ``args``, the reason in
    ``error``). A last ``<tool_call>`` that was never closed (the answer hit the
    token limit or a stop string) is parsed too. The returned text is the answer
    without the blocks, stripped.

    Small models often write the same JSON object without the tags, bare or in a
    ```` ```json ```` fence. With ``names`` (the bound tools), an answer without
    ``<tool_call>`` blocks has such objects read as calls when their ``name`` is
    one of ``names``; anything else stays text.

    Example:
        >>> text, calls, bad = parse_tool_calls('ok <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>')
        >>> text, calls[0]["name"], calls[0]["args"], bad
        ('ok', 'add', {'a': 1}, [])
    """
    calls: list[ToolCall] = []
    bad: list[InvalidToolCall] = []
    kept: list[str] = []

    def add(body: str, closed: bool) -> str:
        call, error, rest = _decode_call(body, closed)
        if call is None:
            m = re.search(r'"name"\s*:\s*"([^"]+)"', body)
            name = m.group(1) if m else None
            bad.append(invalid_tool_call(name=name, args=body.strip(), id=call_id(), error=error))
        else:
            calls.append(tool_call(name=call["name"], args=call["args"], id=call_id()))
        return rest

    pos = 0
    for m in _TOOL_BLOCK.finditer(text):
        kept.append(text[pos : m.start()])
        add(m.group(1), closed=True)
        pos = m.end()
    tail = text[pos:]
    k = tail.find(OPEN)
    if k >= 0:
        kept.append(tail[:k])
        kept.append(add(tail[k + len(OPEN) :], closed=False))
    else:
        kept.append(tail)
    content = "".join(kept)
    if names and not calls and not bad:
        content, calls = _untagged_calls(content, set(names))
    return re.sub(r"\n{3,}", "\n\n", content).strip(), calls, bad


def _bound_call(body: str, names: set[str]) -> ToolCall | None:
    """``body`` as a call of one of the bound tools ``names``, else None."""
    call, _, _ = _decode_call(body, closed=True)
    if call is None or call["name"] not in names:
        return None
    return tool_call(name=call["name"], args=call["args"], id=call_id())


def _untagged_calls(text: str, names: set[str]) -> tuple[str, list[ToolCall]]:
    """Calls of bound tools written as JSON without ``<tool_call>`` tags: in fences, or an answer that is
    nothing but such objects (whitespace between)."""
    calls: list[ToolCall] = []
    kept: list[str] = []
    pos = 0
    for m in _FENCE.finditer(text):
        call = _bound_call(m.group(1), names)
        if call is not None:
            calls.append(call)
            kept.append(text[pos : m.start()])
            pos = m.end()
    kept.append(text[pos:])
    if calls or not text.strip().startswith("{"):
        return "".join(kept), calls
    rest = text.strip()
    while rest:
        try:
            _, end = _DECODER.raw_decode(rest)
        except ValueError:
            return text, []  # not only JSON objects (or the last one cut short): plain text
        call = _bound_call(rest[:end], names)
        if call is None:
            return text, []
        calls.append(call)
        rest = rest[end:].lstrip()
    return "", calls
