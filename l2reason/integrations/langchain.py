"""LangChain chat model backed by an l2reason backend: ``ChatL2Reason``.

Requires ``langchain-core`` (``pip install l2reason[langchain]``).

How LangChain messages become the model's chat:

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
  template writes them, one ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``
  block per call after the text; ``invalid_tool_calls`` cannot be rendered
  faithfully and raise.
- ``stop`` may be one string or a list of strings.

Tools (:meth:`ChatL2Reason.bind_tools`) use the model's own chat-template
format: the tool definitions (OpenAI function schemas) go to the tokenizer's
chat template as ``tools=`` (Qwen2.5 writes them into the system turn); a
template that takes no tools gets the same kind of ``# Tools`` system section
written by l2reason. The answer's ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``
blocks become ``AIMessage.tool_calls`` (fresh ids), blocks that are not valid
JSON ``invalid_tool_calls``. ``tool_choice`` ``"auto"`` (default), ``"none"``
(tools not shown), ``"any"``/``"required"`` and a tool name are supported; the
last two are enforced by starting the assistant turn with ``<tool_call>`` (and
the name), so the model can only continue with a call. Structured output
(:meth:`ChatL2Reason.with_structured_output`) is a forced call of one tool whose
arguments are the schema; an answer that does not parse raises
:class:`StructuredOutputError`.

``batch``/``abatch`` (and ``generate`` with several prompts) send every input
to the backend in one ``generate_many`` call (the transformers backend runs
requests with the same norm/intervention settings in one batch); ``ainvoke``
runs the backend call in a worker thread.

``stream``/``astream`` yield the answer token by token (the backend's
``generate_stream``): each chunk's ``response_metadata["l2reason"]`` has its
``token_ids`` and their ``norms``; the last chunk (empty content) carries the
whole message's metadata (ℓ2 summary) and ``usage_metadata``. With tools bound
or ``n > 1``, or on a backend that cannot stream, the whole message comes as
one chunk at the end (tool calls are parsed from the complete answer).

Example:
    >>> from l2reason.integrations.langchain import ChatL2Reason
    >>> llm = ChatL2Reason(model="default", n=4, selection="l2", temperature=0.7)  # doctest: +SKIP
    >>> msg = llm.invoke("What is 17 * 23?")  # doctest: +SKIP
    >>> msg.response_metadata["l2reason"]["selection"]["index"]  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    InvalidToolCall,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, LLMResult
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.runnables.config import RunnableConfig, get_config_list
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from l2reason.backends.base import (
    GenerationRequest,
    GenerationResult,
    Message,
    NormSpec,
    SamplingParams,
    SelectionSpec,
)
from l2reason.backends.shared import get_backend
from l2reason.errors import ConfigError, L2ReasonError, PartialResultsError

_ROLES = ("system", "user", "assistant", "tool")
_CHAT_ROLES = {"human": "user", "ai": "assistant"}  # LangChain's own role names in a ChatMessage
_TOOL_PARTS = ("tool_use", "tool_call")  # tool calls written as content parts (Anthropic / LangChain v1)
_CALL_KWARGS = ("n", "temperature", "top_p", "max_tokens", "seed", "tools", "tool_choice")
# Set by LangChain's own wrappers (with_structured_output, tracing); not a generation setting.
_IGNORED_KWARGS = ("ls_structured_output_format", "structured_output_format")


class StructuredOutputError(L2ReasonError, OutputParserException):
    """The model's answer is not the structured output asked for (no call of the schema's tool, bad JSON,
    or arguments that fail the schema). ``llm_output`` holds the model's raw text."""


def _role(m: BaseMessage) -> str:
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
        if role in _ROLES:
            return role
        raise ConfigError(f"unsupported ChatMessage role {m.role!r}; use one of {', '.join(_ROLES)}")
    raise ConfigError(f"unsupported message type {type(m).__name__}; use System/Human/AI/Tool messages")


def _text(m: BaseMessage, index: int) -> tuple[str, list[dict[str, Any]]]:
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


def _tool_call_text(call: dict[str, Any], index: int) -> str:
    """One tool call as Qwen's chat template writes it."""
    name, args = call.get("name"), call.get("args")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"message {index}: a tool call has no name ({call!r})")
    try:
        body = json.dumps({"name": name, "arguments": args if args is not None else {}}, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"message {index}: the arguments of tool call {name!r} are not JSON ({e})") from e
    return f"<tool_call>\n{body}\n</tool_call>"


def _to_message(m: BaseMessage, index: int) -> Message:
    """A LangChain message as an l2reason :class:`Message` (text only; tool calls rendered)."""
    if not isinstance(m, BaseMessage):
        raise ConfigError(f"message {index} is a {type(m).__name__}, not a LangChain message")
    role = _role(m)
    text, part_calls = _text(m, index)
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
            blocks = [_tool_call_text(c, index) for c in calls]
            text = "\n".join([text, *blocks]) if text else "\n".join(blocks)
    return Message(role=role, content=text)  # type: ignore[arg-type]


def _stop_list(stop: Any) -> list[str]:
    """``stop`` as a list: one string is one stop string (not its characters)."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list | tuple) and all(isinstance(x, str) for x in stop):
        return list(stop)
    raise ConfigError(f"stop must be a string or a list of strings, got {stop!r}")


# ---- tools: definitions in, <tool_call> blocks out

_TOOL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_OPEN = "<tool_call>"


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _tool_name(tool: dict[str, Any]) -> str:
    return str(tool["function"]["name"])


def _openai_tools(tools: Any) -> list[dict[str, Any]]:
    """Tool definitions (dicts, pydantic models, functions, ``BaseTool``s) as OpenAI function tools."""
    if tools is None:
        return []
    if not isinstance(tools, list | tuple):
        raise ConfigError(f"tools must be a list of tools, got {type(tools).__name__}")
    out: list[dict[str, Any]] = []
    for i, t in enumerate(tools):
        try:
            out.append(convert_to_openai_tool(t))
        except Exception as e:
            raise ConfigError(f"tool {i} ({t!r:.80}) is not a tool definition LangChain can convert: {e}") from e
    names = [_tool_name(t) for t in out]
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


def _tool_plan(tools: list[dict[str, Any]], choice: Any) -> tuple[bool, str]:
    """What ``tool_choice`` means here: (show the tools in the prompt and parse calls, the assistant prefix).

    The prefix starts the assistant turn with an open ``<tool_call>`` (and the
    tool's name when one is forced), so the model can only continue with a call.
    """
    names = [_tool_name(t) for t in tools]
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
        return True, _OPEN + '\n{"name": "'
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
    return _OPEN + '\n{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": {'


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


def _render_prompt(tokenizer: Any, msgs: list[Message], tools: list[dict[str, Any]], prefix: str) -> str:
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


def _decode_call(body: str, closed: bool) -> tuple[dict[str, Any] | None, str, str]:
    """One ``<tool_call>`` body as ``(call, error, rest)``: ``call`` is ``{"name", "args"}`` or None with
    ``error``; ``rest`` is text after the JSON object of an unclosed block."""
    s = body.strip()
    try:
        obj, end = json.JSONDecoder().raw_decode(s)
    except json.JSONDecodeError as e:
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
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
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
            bad.append(invalid_tool_call(name=name, args=body.strip(), id=_call_id(), error=error))
        else:
            calls.append(tool_call(name=call["name"], args=call["args"], id=_call_id()))
        return rest

    pos = 0
    for m in _TOOL_BLOCK.finditer(text):
        kept.append(text[pos : m.start()])
        add(m.group(1), closed=True)
        pos = m.end()
    tail = text[pos:]
    k = tail.find(_OPEN)
    if k >= 0:
        kept.append(tail[:k])
        kept.append(add(tail[k + len(_OPEN) :], closed=False))
    else:
        kept.append(tail)
    content = "".join(kept)
    if names and not calls and not bad:
        content, calls = _untagged_calls(content, set(names))
    return re.sub(r"\n{3,}", "\n\n", content).strip(), calls, bad


_FENCE = re.compile(r"```(?:json)?[ \t]*\n?(.*?)```", re.DOTALL)


def _bound_call(body: str, names: set[str]) -> ToolCall | None:
    """``body`` as a call of one of the bound tools ``names``, else None."""
    call, _, _ = _decode_call(body, closed=True)
    if call is None or call["name"] not in names:
        return None
    return tool_call(name=call["name"], args=call["args"], id=_call_id())


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
    decoder, rest = json.JSONDecoder(), text.strip()
    while rest:
        try:
            _, end = decoder.raw_decode(rest)
        except json.JSONDecodeError:
            return text, []  # not only JSON objects (or the last one cut short): plain text
        call = _bound_call(rest[:end], names)
        if call is None:
            return text, []
        calls.append(call)
        rest = rest[end:].lstrip()
    return "", calls


# ---- structured output


def _parse_structured(msg: BaseMessage, schema: Any, name: str) -> Any:
    """The structured value in ``msg``: the first call of tool ``name``, validated by a pydantic ``schema``."""
    raw = ""
    if isinstance(msg, AIMessage):
        raw = msg.response_metadata.get("l2reason", {}).get("raw_text") or msg.text
    calls = [c for c in getattr(msg, "tool_calls", []) if c["name"] == name]
    if not calls:
        bad = [c for c in getattr(msg, "invalid_tool_calls", []) if c.get("name") in (name, None)]
        if bad:
            why = f"its {name!r} call does not parse ({bad[0].get('error')})"
        else:
            why = f"it called no {name!r} tool"
        raise StructuredOutputError(
            f"the model's answer is not a {name!r} object: {why}; raw answer: {raw[:300]!r}. "
            "Give it more tokens (max_tokens), a clearer prompt, or a stronger model",
            llm_output=raw,
        )
    args = calls[0]["args"]
    if isinstance(schema, type) and hasattr(schema, "model_validate"):
        from pydantic import ValidationError

        try:
            return schema.model_validate(args)
        except ValidationError as e:
            raise StructuredOutputError(
                f"the model's {name!r} arguments do not fit the schema: {e}; arguments: {args!r}", llm_output=raw
            ) from e
    required = convert_to_openai_tool(schema)["function"].get("parameters", {}).get("required", [])
    missing = [k for k in required if k not in args]
    if missing:
        raise StructuredOutputError(
            f"the model's {name!r} arguments lack required keys {missing}; arguments: {args!r}", llm_output=raw
        )
    return args


# ---- batches: one backend call, results handed to the per-input runs


class _Prefetched:
    """Results of one ``generate_many`` call waiting for the per-input runs of a batch (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[tuple[int, str], list[GenerationResult]] = {}

    def put(self, key: tuple[int, str], result: GenerationResult) -> None:
        with self._lock:
            self._results.setdefault(key, []).append(result)

    def take(self, key: tuple[int, str]) -> GenerationResult | None:
        with self._lock:
            got = self._results.get(key)
            return got.pop(0) if got else None


# LangChain runs a batch's inputs in threads (``ContextThreadPoolExecutor``) or
# tasks, which copy the context: results fetched before reach them this way.
_PREFETCH: ContextVar[_Prefetched | None] = ContextVar("l2reason_langchain_prefetch", default=None)


@dataclass(frozen=True)
class _Call:
    """One call's backend request and how to read its answer: parse tool calls (of ``names``) after
    putting back the assistant ``prefix`` the prompt ended with."""

    req: GenerationRequest
    parse: bool = False
    prefix: str = ""
    names: tuple[str, ...] = ()


def _request_key(backend: Any, req: GenerationRequest) -> tuple[int, str]:
    return id(backend), req.model_dump_json()


class ChatL2Reason(BaseChatModel):
    """A LangChain chat model whose answers carry ℓ2 statistics.

    Args:
        model: model spec (``"default"``, ``"fast"``, a path, a hub id); ignored
            when ``backend`` is given.
        backend: an l2reason backend object to use instead of loading ``model``.
        temperature, top_p, max_tokens, seed: sampling settings.
        n: candidates per call (one batch).
        selection: a selector name (``l2``, ``l2-vote``, ``majority``, ...);
            with ``n > 1`` and a selection the chosen candidate is returned and
            every candidate's score is in ``generation_info``; without one all
            ``n`` candidates are returned as generations.
        score: the ℓ2 score of the ``l2`` selectors (``B/T`` default).
        interventions: intervention specs, e.g. ``[{"kind": "alrr"}]``.
        norm_layers: layers whose norms are summarised (``"band"`` default).

    Per call (``invoke(..., **kw)`` or ``bind``): ``n``, ``temperature``,
    ``top_p``, ``max_tokens``, ``seed``, ``tools`` and ``tool_choice``.

    The chosen message's ``response_metadata["l2reason"]`` holds per-layer
    mean norms, the ℓ2 scores, the selection and what the interventions did;
    ``usage_metadata`` counts the prompt once and every candidate's tokens.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str = "default"
    backend: Any = Field(default=None, exclude=True)
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    n: int = 1
    selection: str | None = None
    score: str = "B/T"
    interventions: list[dict[str, Any]] = Field(default_factory=list)
    norm_layers: list[int] | str = "band"
    _be: Any = PrivateAttr(default=None)

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, v: Any) -> Any:
        if v is not None and not callable(getattr(v, "generate", None)):
            hint = f"; to load a model by name pass model={v!r}" if isinstance(v, str) else ""
            raise ConfigError(
                "backend must be an l2reason backend object with generate() (HFBackend, SGLangBackend, "
                f"or get_backend(...)), got {type(v).__name__}{hint}"
            )
        return v

    @property
    def _llm_type(self) -> str:
        return "l2reason"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n": self.n,
            "selection": self.selection,
            "score": self.score,
            "interventions": self.interventions,
        }

    def _backend(self) -> Any:
        if self.backend is not None:
            return self.backend
        if self._be is None:
            self._be = get_backend(self.model)
        return self._be

    # ---- one call: request, backend, result ---------------------------
    def _request(self, messages: list[BaseMessage], stop: Any, kwargs: dict[str, Any]) -> _Call:
        """The backend request for one call and how to read its answer."""
        kwargs = {k: v for k, v in kwargs.items() if k not in _IGNORED_KWARGS}
        unknown = sorted(set(kwargs) - set(_CALL_KWARGS))
        if unknown:
            raise ConfigError(
                f"ChatL2Reason does not take {', '.join(unknown)} per call; it takes {', '.join(_CALL_KWARGS)} "
                "(and stop)"
            )
        msgs = [_to_message(m, i) for i, m in enumerate(messages)]
        tools = _openai_tools(kwargs.get("tools"))
        parse, prefix = _tool_plan(tools, kwargs.get("tool_choice"))
        sel = SelectionSpec(method=self.selection, score=self.score) if self.selection else None
        common: dict[str, Any] = dict(
            n=kwargs.get("n", self.n),
            sampling=SamplingParams(
                temperature=kwargs.get("temperature", self.temperature),
                top_p=kwargs.get("top_p", self.top_p),
                max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
                stop=_stop_list(stop),
                seed=kwargs.get("seed", self.seed),
            ),
            norms=NormSpec(layers=self.norm_layers, per_token=True),  # type: ignore[arg-type]
            logprobs=5 if sel is not None else None,
            interventions=self.interventions,
            selection=sel,
        )
        if parse:
            prompt = _render_prompt(getattr(self._backend(), "tokenizer", None), msgs, tools, prefix)
            names = tuple(_tool_name(t) for t in tools)
            return _Call(GenerationRequest.build(prompt=prompt, **common), True, prefix, names)
        return _Call(GenerationRequest.build(messages=msgs, **common))

    def _run(self, req: GenerationRequest) -> GenerationResult:
        backend = self._backend()
        store = _PREFETCH.get()
        res = store.take(_request_key(backend, req)) if store is not None else None
        return res if res is not None else backend.generate(req)

    @staticmethod
    def _chat_result(res: GenerationResult, call: _Call) -> ChatResult:
        sel = call.req.selection is not None
        prompt_tokens = res.candidates[0].prompt_tokens
        usage = {
            "input_tokens": prompt_tokens,
            "output_tokens": res.completion_tokens,
            "total_tokens": prompt_tokens + res.completion_tokens,
        }

        def meta(c: Any) -> dict[str, Any]:
            return {
                "index": c.index,
                "finish_reason": c.finish_reason,
                "completion_tokens": c.completion_tokens,
                "layers": c.norms.layers if c.norms else None,
                "mean_norm": c.norms.mean if c.norms else None,
                "score": c.score,
                "interventions": c.interventions,
            }

        chosen = [res.candidates[res.chosen_index]] if sel else res.candidates
        gens = []
        for c in chosen:
            info = {
                "model_id": res.model_id,
                "selection": res.selection,
                "candidates": [meta(x) for x in res.candidates] if sel else None,
                **meta(c),
            }
            fields: dict[str, Any] = {"content": c.text}
            if call.parse:
                raw = call.prefix + c.text
                info["raw_text"] = raw
                content, calls, bad = parse_tool_calls(raw, call.names)
                fields = {"content": content, "tool_calls": calls, "invalid_tool_calls": bad}
            msg = AIMessage(
                **fields,
                response_metadata={"model_name": res.model_id, "finish_reason": c.finish_reason, "l2reason": info},
                usage_metadata=usage,  # type: ignore[arg-type]
            )
            gens.append(ChatGeneration(message=msg, generation_info={"l2reason": info}))
        return ChatResult(generations=gens, llm_output={"model_id": res.model_id, "seconds": res.seconds})

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._request(messages, stop, kwargs)
        return self._chat_result(self._run(call.req), call)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # The backend call blocks (a forward pass per token): a worker thread keeps the loop free.
        # Backends serialise their own calls (the transformers backend holds a lock).
        call = self._request(messages, stop, kwargs)
        res = await asyncio.to_thread(self._run, call.req)
        return self._chat_result(res, call)

    # ---- streaming ------------------------------------------------------
    def _streams(self, call: _Call) -> bool:
        """Whether this call streams token by token: one candidate, no tool parsing, a streaming backend."""
        return not call.parse and call.req.n == 1 and callable(getattr(self._backend(), "generate_stream", None))

    @staticmethod
    def _delta_chunk(ev: Any) -> ChatGenerationChunk:
        info = {"token_ids": ev.token_ids, "norms": ev.norms}  # lists: joining chunks concatenates them
        return ChatGenerationChunk(
            message=AIMessageChunk(content=ev.text, response_metadata={"l2reason": info}),
            generation_info={"l2reason": info},
        )

    def _final_chunk(self, res: GenerationResult, call: _Call, streamed: bool) -> ChatGenerationChunk:
        """The last chunk: the whole message's metadata (ℓ2 summary, usage); its content only when nothing
        was streamed before."""
        gen = self._chat_result(res, call).generations[0]
        msg = gen.message
        assert isinstance(msg, AIMessage)
        fields: dict[str, Any] = {"content": "" if streamed else msg.content}
        if not streamed and (msg.tool_calls or msg.invalid_tool_calls):
            fields["tool_call_chunks"] = [
                {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i, "type": "tool_call_chunk"}
                for i, c in enumerate(msg.tool_calls)
            ] + [
                {
                    "name": c.get("name"),
                    "args": c.get("args"),
                    "id": c.get("id"),
                    "index": len(msg.tool_calls) + i,
                    "type": "tool_call_chunk",
                }
                for i, c in enumerate(msg.invalid_tool_calls)
            ]
        chunk = AIMessageChunk(
            **fields,
            response_metadata=msg.response_metadata,
            usage_metadata=msg.usage_metadata,
            chunk_position="last",
        )
        return ChatGenerationChunk(message=chunk, generation_info=gen.generation_info)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._request(messages, stop, kwargs)
        if not self._streams(call):  # tools, n > 1: the whole message as one chunk
            yield self._final_chunk(self._run(call.req), call, streamed=False)
            return
        with contextlib.closing(self._backend().generate_stream(call.req)) as events:
            for ev in events:
                if ev.kind == "result":
                    yield self._final_chunk(ev.result, call, streamed=True)
                elif ev.text or ev.token_ids:
                    chunk = self._delta_chunk(ev)
                    if run_manager is not None:
                        run_manager.on_llm_new_token(ev.text, chunk=chunk)
                    yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        call = self._request(messages, stop, kwargs)
        backend = self._backend()
        if not self._streams(call) or not callable(getattr(backend, "agenerate_stream", None)):
            res = await asyncio.to_thread(self._run, call.req)
            yield self._final_chunk(res, call, streamed=False)
            return
        events = backend.agenerate_stream(call.req)
        try:
            async for ev in events:
                if ev.kind == "result":
                    yield self._final_chunk(ev.result, call, streamed=True)
                elif ev.text or ev.token_ids:
                    chunk = self._delta_chunk(ev)
                    if run_manager is not None:
                        await run_manager.on_llm_new_token(ev.text, chunk=chunk)
                    yield chunk
        finally:
            await events.aclose()

    # ---- batches: every input in one backend call ----------------------
    def _prefetch_requests(self, prompts: Sequence[list[BaseMessage]], kwargs: dict[str, Any]) -> list[Any]:
        """The requests of a batch's inputs (None where building one fails: that input's own run raises)."""
        kw = dict(kwargs)
        stop = kw.pop("stop", None)
        reqs: list[Any] = []
        for msgs in prompts:
            try:
                reqs.append(self._request(msgs, stop, kw).req)
            except Exception:
                reqs.append(None)
        return reqs

    def _use_prefetch(self, n_inputs: int) -> bool:
        from langchain_core.globals import get_llm_cache

        if n_inputs < 2 or not callable(getattr(self._backend(), "generate_many", None)):
            return False
        # with a cache the per-input runs may not reach the backend: generating ahead would waste work
        return self.cache is False or (self.cache is None and get_llm_cache() is None)

    def _store(self, reqs: list[Any], results: list[Any]) -> _Prefetched:
        store = _PREFETCH.get() or _Prefetched()
        backend = self._backend()
        for req, res in zip(reqs, results, strict=True):
            if req is not None and res is not None:
                store.put(_request_key(backend, req), res)
        return store

    @staticmethod
    def _generate_many(backend: Any, reqs: list[Any]) -> list[Any]:
        """One ``generate_many`` call for the requests that built; None for the rest and for failures."""
        idx = [i for i, r in enumerate(reqs) if r is not None]
        out: list[Any] = [None] * len(reqs)
        if not idx:
            return out
        try:
            got = backend.generate_many([reqs[i] for i in idx])
        except PartialResultsError as e:
            got = e.results  # what finished; the per-input runs redo (and report) the rest
        except Exception:
            return out  # e.g. one request over the context: each input's own run raises its own error
        for i, res in zip(idx, got, strict=True):
            out[i] = res
        return out

    @contextlib.contextmanager
    def _prefetched(self, prompts: Sequence[list[BaseMessage]], kwargs: dict[str, Any]) -> Iterator[None]:
        if not self._use_prefetch(len(prompts)):
            yield
            return
        reqs = self._prefetch_requests(prompts, kwargs)
        token = _PREFETCH.set(self._store(reqs, self._generate_many(self._backend(), reqs)))
        try:
            yield
        finally:
            _PREFETCH.reset(token)

    def _batch_prompts(self, inputs: list[Any]) -> list[list[BaseMessage]] | None:
        try:
            return [self._convert_input(x).to_messages() for x in inputs]
        except Exception:
            return None  # the per-input runs report bad inputs

    @staticmethod
    def _chunks(inputs: list[Any], config: Any) -> list[tuple[int, int]]:
        """Index ranges of one backend call each: ``max_concurrency`` inputs at a time, if set."""
        limit = get_config_list(config, len(inputs))[0].get("max_concurrency") if inputs else None
        step = limit if isinstance(limit, int) and limit > 0 else max(1, len(inputs))
        return [(i, min(i + step, len(inputs))) for i in range(0, len(inputs), step)]

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Like LangChain's ``batch`` (callbacks, configs and errors per input), with every input's
        generation done in one backend ``generate_many`` call (one per ``max_concurrency`` inputs)."""
        prompts = self._batch_prompts(inputs)
        if prompts is None or not self._use_prefetch(len(inputs)):
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        reqs = self._prefetch_requests(prompts, kwargs)
        results: list[Any] = []
        for a, b in self._chunks(inputs, config):
            results += self._generate_many(self._backend(), reqs[a:b])
        token = _PREFETCH.set(self._store(reqs, results))
        try:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        finally:
            _PREFETCH.reset(token)

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """``batch`` for asyncio: one ``generate_many`` call in a worker thread, then LangChain's ``abatch``."""
        prompts = self._batch_prompts(inputs)
        if prompts is None or not self._use_prefetch(len(inputs)):
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        reqs = self._prefetch_requests(prompts, kwargs)
        results: list[Any] = []
        for a, b in self._chunks(inputs, config):
            results += await asyncio.to_thread(self._generate_many, self._backend(), reqs[a:b])
        token = _PREFETCH.set(self._store(reqs, results))
        try:
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        finally:
            _PREFETCH.reset(token)

    def generate(
        self, messages: list[list[BaseMessage]], stop: list[str] | None = None, *args: Any, **kwargs: Any
    ) -> LLMResult:
        """LangChain's ``generate``; several prompts go to the backend in one ``generate_many`` call."""
        with self._prefetched(messages, {**_kwargs_for_request(kwargs), "stop": stop}):
            return super().generate(messages, stop, *args, **kwargs)

    async def agenerate(
        self, messages: list[list[BaseMessage]], stop: list[str] | None = None, *args: Any, **kwargs: Any
    ) -> LLMResult:
        """LangChain's ``agenerate``; several prompts go to the backend in one ``generate_many`` call."""
        if not self._use_prefetch(len(messages)):
            return await super().agenerate(messages, stop, *args, **kwargs)
        reqs = self._prefetch_requests(messages, {**_kwargs_for_request(kwargs), "stop": stop})
        results = await asyncio.to_thread(self._generate_many, self._backend(), reqs)
        token = _PREFETCH.set(self._store(reqs, results))
        try:
            return await super().agenerate(messages, stop, *args, **kwargs)
        finally:
            _PREFETCH.reset(token)

    # ---- tools and structured output ----------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[Any, AIMessage]:
        """Bind tools (dicts in OpenAI/JSON-schema form, pydantic models, functions, ``BaseTool``s).

        The tool definitions go to the model's chat template; the answer's
        ``<tool_call>`` blocks come back as ``AIMessage.tool_calls``.
        ``tool_choice``: ``"auto"`` (default: the model decides), ``"none"``
        (tools not shown), ``"any"``/``"required"``/``True`` (the model must
        call a tool), or a tool name / ``{"type": "function", "function":
        {"name": ...}}`` (the model must call that tool). Anything else raises
        :class:`~l2reason.errors.ConfigError`.

        Example:
            >>> def add(a: int, b: int) -> int:
            ...     '''Add two integers.'''
            ...     return a + b
            >>> msg = ChatL2Reason().bind_tools([add]).invoke("What is 2 + 3?")  # doctest: +SKIP
            >>> msg.tool_calls  # doctest: +SKIP
            [{'name': 'add', 'args': {'a': 2, 'b': 3}, 'id': 'call_…', 'type': 'tool_call'}]
        """
        formatted = _openai_tools(list(tools))
        _tool_plan(formatted, tool_choice)  # fail now, not at the first call
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: str = "function_calling",
        **kwargs: Any,
    ) -> Runnable[Any, Any]:
        """Answers as ``schema`` objects: a pydantic class gives its instances, a JSON schema (with a
        ``title``), an OpenAI tool dict or a TypedDict gives dicts.

        The model is made to call one tool whose arguments are the schema (the
        assistant turn starts with that call, see :meth:`bind_tools`). An answer
        that does not parse or fit raises :class:`StructuredOutputError` (an
        ``OutputParserException``); with ``include_raw=True`` the result is
        ``{"raw": AIMessage, "parsed": ... or None, "parsing_error": ... or None}``
        and nothing raises, as in LangChain.

        Example:
            >>> from pydantic import BaseModel
            >>> class Answer(BaseModel):
            ...     value: int
            >>> ChatL2Reason().with_structured_output(Answer).invoke("What is 6 * 7?")  # doctest: +SKIP
            Answer(value=42)
        """
        kwargs.pop("strict", None)
        if kwargs:
            raise ConfigError(f"with_structured_output does not take {', '.join(sorted(kwargs))}")
        if method != "function_calling":
            raise ConfigError(
                f"with_structured_output method={method!r} is not supported: ChatL2Reason produces structured "
                "output by a forced tool call (method='function_calling')"
            )
        tool = _openai_tools([schema])[0]
        name = _tool_name(tool)
        llm = self.bind_tools(
            [tool],
            tool_choice=name,
            ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
        )
        parser = RunnableLambda(lambda m: _parse_structured(m, schema, name), name=f"parse_{name}")
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")


def _kwargs_for_request(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The generation settings among ``generate``'s keyword arguments (not callbacks, tags, run names)."""
    skip = {"callbacks", "tags", "metadata", "run_name", "run_id"}
    return {k: v for k, v in kwargs.items() if k not in skip}
