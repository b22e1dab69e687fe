"""How LangChain messages become the model's chat (l2reason :class:`~l2reason.backends.base.Message`).

- ``SystemMessage``/``HumanMessage``/``AIMessage``/``ToolMessage`` (and a
  ``ChatMessage`` with one of those roles) map to the roles ``system``,
  ``user``, ``assistant`` and ``tool``.
- List content is joined as text, as ``BaseMessage.text`` does: plain strings
  and ``{"type": "text", "text": ...}`` parts. Any other part (images, audio,
  files, reasoning blocks) is a :class:`~l2reason.errors.ConfigError` naming
  it: the model reads text only, and a part is never passed on as its Python
  repr.
- An ``AIMessage``'s tool calls (``tool_calls``, or ``tool_use``/``tool_call``
  content parts) are rendered into the assistant turn the way Qwen's chat
  template writes them (:func:`~l2reason.langchain.tool_calls.tool_call_text`),
  one block per call after the text; ``invalid_tool_calls`` cannot be rendered
  faithfully and raise.
- ``stop`` may be one string or a list of strings.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage

from l2reason.backends.base import Message
from l2reason.errors import ConfigError
from l2reason.langchain.tool_calls import tool_call_text

ROLES = ("system", "user", "assistant", "tool")
_CHAT_ROLES = {"human": "user", "ai": "assistant"}  # LangChain's own role names in a ChatMessage
_TOOL_PARTS = ("tool_use", "tool_call")  # tool calls written as content parts (Anthropic / LangChain v1)


def message_role(m: BaseMessage) -> str:
    """The chat role of a LangChain message (``system``, ``user``, ``assistant`` or ``tool``)."""
    if isinstance(m, SystemMessage):
        return "system"
    if isinstance(m, HumanMessage):
        return "user"
    if isinstance(m, AIMessage):
        return "assistant"
    if isinstance(m, ToolMessage):
        return "tool"
    if isinstance(m, ChatMessage):
        role = _CHAT_ROLES.get(m.role, m.role)
        if role in ROLES:
            return role
        raise ConfigError(f"unsupported ChatMessage role {m.role!r}; use one of {', '.join(ROLES)}")
    raise ConfigError(f"unsupported message type {type(m).__name__}; use System/Human/AI/Tool messages")


def message_text(m: BaseMessage, index: int) -> tuple[str, list[dict[str, Any]]]:
    """A message's text (list content joined) and the tool calls written as content parts."""
    content = m.content
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise ConfigError(f"message {index} ({type(m).__name__}) has content of type {type(content).__name__}")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in _TOOL_PARTS and isinstance(m, AIMessage):
            args = part.get("input", part.get("args", {}))
            calls.append({"name": part.get("name"), "args": args, "id": part.get("id")})
        else:
            if kind is not None:
                what = repr(kind)
            else:
                what = "dict (no 'type' key)" if isinstance(part, dict) else type(part).__name__
            raise ConfigError(
                f"message {index} ({type(m).__name__}) has a content part of type {what} at position {j}; "
                "ChatL2Reason passes text only (strings and {'type': 'text', 'text': ...} parts): "
                "remove images, audio, files and reasoning blocks"
            )
    return "".join(texts), calls


def to_message(m: BaseMessage, index: int) -> Message:
    """A LangChain message as an l2reason :class:`Message` (text only; tool calls rendered)."""
    if not isinstance(m, BaseMessage):
        raise ConfigError(f"message {index} is a {type(m).__name__}, not a LangChain message")
    role = message_role(m)
    text, part_calls = message_text(m, index)
    if isinstance(m, AIMessage):
        if m.invalid_tool_calls:
            names = [c.get("name") for c in m.invalid_tool_calls]
            raise ConfigError(
                f"message {index} (AIMessage) holds invalid tool calls {names} (arguments that are not JSON); "
                "they cannot be shown to the model faithfully: fix or drop them"
            )
        calls = [dict(c) for c in m.tool_calls]
        ids = {c.get("id") for c in calls if c.get("id")}
        calls += [c for c in part_calls if not (c.get("id") and c["id"] in ids)]
        if calls:
            blocks = [tool_call_text(c, index) for c in calls]
            text = "\n".join([text, *blocks]) if text else "\n".join(blocks)
    return Message(role=role, content=text)  # type: ignore[arg-type]


def stop_list(stop: Any) -> list[str]:
    """``stop`` as a list: one string is one stop string (not its characters)."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list | tuple) and all(isinstance(x, str) for x in stop):
        return list(stop)
    raise ConfigError(f"stop must be a string or a list of strings, got {stop!r}")
