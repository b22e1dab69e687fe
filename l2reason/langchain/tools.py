"""Tools going in: definitions as OpenAI function tools, what ``tool_choice`` means, the prompt with tools.

The tool definitions go to the tokenizer's chat template as ``tools=``
(Qwen2.5 writes them into the system turn); a template that takes no tools
gets the same kind of ``# Tools`` system section written by l2reason.
``tool_choice`` ``"auto"`` (default), ``"none"`` (tools not shown),
``"any"``/``"required"`` and a tool name are supported; the last two are
enforced by starting the assistant turn with ``<tool_call>`` (and the name), so
the model can only continue with a call. The answer is read back by
:mod:`l2reason.langchain.tool_calls`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, is_typeddict

from langchain_core.utils.function_calling import convert_to_openai_tool

from l2reason.backends.base import Message
from l2reason.errors import ConfigError
from l2reason.langchain.tool_calls import OPEN


def tool_name(tool: dict[str, Any]) -> str:
    """The function name of an OpenAI function tool."""
    return str(tool["function"]["name"])


_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # OpenAI's rule for function names (dots allowed, as LangChain's)


def _is_tool_class(t: type) -> bool:
    """A class that describes a tool's arguments: a pydantic model or a TypedDict (not any class)."""
    from pydantic import BaseModel

    return issubclass(t, BaseModel) or is_typeddict(t)


def _check_tool(i: int, given: Any, tool: Any) -> dict[str, Any]:
    """The converted tool ``i``, checked: a function with a usable name, a JSON-schema object of parameters,
    and nothing JSON cannot write (the definition goes into the prompt as JSON)."""
    fn = tool.get("function") if isinstance(tool, dict) else None
    what = f"tool {i} ({given!r:.80})"
    if not isinstance(fn, dict):
        raise ConfigError(f"{what} is not a function tool ({{'type': 'function', 'function': {{...}}}})")
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"{what} has the name {str(name)[:80]!r}; a tool name is 1-64 letters, digits, '_', '.' or '-' "
            "(a lambda has none: use a def or a BaseTool)"
        )
    if not isinstance(fn.get("description", ""), str):
        raise ConfigError(f"{what}: its description must be a string")
    if not isinstance(fn.get("parameters", {}), dict):
        raise ConfigError(f"{what}: its parameters must be a JSON schema object, got {fn['parameters']!r:.60}")
    try:
        json.dumps(tool, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what} holds a value JSON cannot write ({e}); it goes into the prompt as JSON") from e
    return tool


def openai_tools(tools: Any) -> list[dict[str, Any]]:
    """Tool definitions (dicts, pydantic models, TypedDicts, functions, ``BaseTool`` objects) as OpenAI function tools.

    Raises:
        ConfigError: ``tools`` is not a list (or another sequence) of tools; a tool LangChain cannot convert, a class
            that is neither a pydantic model nor a TypedDict, a name that is not 1-64 of ``[A-Za-z0-9_.-]``
            (a lambda's), a schema that is not an object or holds NaN; two tools with one name.
    """
    if tools is None:
        return []
    if isinstance(tools, str | bytes) or not isinstance(tools, Sequence):
        raise ConfigError(f"tools must be a list of tools, got {type(tools).__name__}")
    out: list[dict[str, Any]] = []
    for i, t in enumerate(tools):
        if isinstance(t, type) and not _is_tool_class(t):
            raise ConfigError(
                f"tool {i} ({t.__name__}) is a plain class; a tool is a function, a BaseTool, a pydantic model "
                "or a TypedDict (or its OpenAI/JSON-schema dict)"
            )
        try:
            converted = convert_to_openai_tool(t)
        except Exception as e:  # LangChain raises what it likes (ValueError, KeyError, TypeError)
            raise ConfigError(f"tool {i} ({t!r:.80}) is not a tool definition LangChain can convert: {e}") from e
        out.append(_check_tool(i, t, converted))
    names = [tool_name(t) for t in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"tool names must be unique; repeated: {', '.join(dup)}")
    return out


def _choice_name(choice: Any) -> str | None:
    """The tool a ``tool_choice`` dict names (OpenAI ``{"type": "function", "function": {"name": ...}}``
    or ``{"name": ...}``), else None."""
    if not isinstance(choice, dict):
        return None
    fn = choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
    return name if isinstance(name, str) else None


def tool_plan(tools: list[dict[str, Any]], choice: Any) -> tuple[bool, str]:
    """What ``tool_choice`` means here: (show the tools in the prompt and parse calls, the assistant prefix).

    The prefix starts the assistant turn with an open ``<tool_call>`` (and the
    tool's name when one is forced), so the model can only continue with a call.
    """
    names = [tool_name(t) for t in tools]
    if not tools:
        if choice not in (None, "auto", "none", False):
            raise ConfigError(f"tool_choice={choice!r} needs tools: bind some with bind_tools([...])")
        return False, ""
    if choice is None or choice == "auto":
        return True, ""
    if choice == "none" or choice is False:
        return False, ""
    if choice in ("any", "required") or choice is True:
        if len(names) == 1:
            return True, _forced_prefix(names[0])
        return True, OPEN + '\n{"name": "'
    name = choice if isinstance(choice, str) else _choice_name(choice)
    if name is None:
        raise ConfigError(
            f"unsupported tool_choice {choice!r}: use 'auto', 'none', 'any'/'required', a tool name, "
            "or {'type': 'function', 'function': {'name': ...}}"
        )
    if name not in names:
        raise ConfigError(f"tool_choice names {name!r}, which is not a bound tool ({', '.join(names)})")
    return True, _forced_prefix(name)


def _forced_prefix(name: str) -> str:
    # the arguments' brace too: left a choice, small models write a bare value (`"arguments": 59`)
    return OPEN + '\n{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": {'


def _tools_system_text(tools: list[dict[str, Any]]) -> str:
    """A ``# Tools`` section for chat templates that take no ``tools=`` (the same call format as Qwen2.5)."""
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        "# Tools\n\nYou can call the functions below to help answer. Their signatures are inside "
        f"<tools></tools> tags:\n<tools>\n{lines}\n</tools>\n\n"
        "To call a function, answer with a JSON object holding its name and arguments inside "
        '<tool_call></tool_call> tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
        "</tool_call>"
    )


def render_prompt(tokenizer: Any, msgs: list[Message], tools: list[dict[str, Any]], prefix: str) -> str:
    """The prompt text with tool definitions, as the model's chat template renders it, plus ``prefix``.

    Sent as a raw-text request, so it is tokenized as it stands (special tokens
    written in the text are recognised); a leading BOS that the tokenizer adds
    by itself is dropped here so it is not doubled.
    """
    if tokenizer is None:
        raise ConfigError("tools need the backend's tokenizer (its chat template); this backend has none")
    dicts = [m.model_dump() for m in msgs]
    template = getattr(tokenizer, "chat_template", None)
    if template is None:
        lines = [f"system: {_tools_system_text(tools)}"] if tools else []
        text = "\n".join(lines + [f"{m['role']}: {m['content']}" for m in dicts]) + "\nassistant:"
        return text + (" " + prefix if prefix else "")
    if tools and "tools" not in str(template):  # the template ignores tools=: write them into the system turn
        block = _tools_system_text(tools)
        if dicts and dicts[0]["role"] == "system":
            dicts[0] = {"role": "system", "content": f"{dicts[0]['content']}\n\n{block}"}
        else:
            dicts.insert(0, {"role": "system", "content": block})
        tools = []
    try:
        text = tokenizer.apply_chat_template(dicts, tools=tools or None, add_generation_prompt=True, tokenize=False)
    except Exception as e:
        raise ConfigError(f"the model's chat template failed on these messages and tools: {e}") from e
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        probe = tokenizer("x", add_special_tokens=True)["input_ids"]
        if probe and probe[0] == getattr(tokenizer, "bos_token_id", None):
            text = text[len(bos) :]
    return text + prefix
