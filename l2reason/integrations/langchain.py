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
  template writes them, one ``<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>``
  block per call after the text; ``invalid_tool_calls`` cannot be rendered
  faithfully and raise. Tool *definitions* (``tools=``) are not supported yet.
- ``stop`` may be one string or a list of strings.

Example:
    >>> from l2reason.integrations.langchain import ChatL2Reason
    >>> llm = ChatL2Reason(model="default", n=4, selection="l2", temperature=0.7)  # doctest: +SKIP
    >>> msg = llm.invoke("What is 17 * 23?")  # doctest: +SKIP
    >>> msg.response_metadata["l2reason"]["selection"]["index"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from l2reason.backends.base import GenerationRequest, Message, NormSpec, SamplingParams, SelectionSpec
from l2reason.backends.shared import get_backend
from l2reason.errors import ConfigError

_ROLES = ("system", "user", "assistant", "tool")
_CHAT_ROLES = {"human": "user", "ai": "assistant"}  # LangChain's own role names in a ChatMessage
_TOOL_PARTS = ("tool_use", "tool_call")  # tool calls written as content parts (Anthropic / LangChain v1)
_CALL_KWARGS = ("n", "temperature", "top_p", "max_tokens", "seed")


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

    The chosen message's ``response_metadata["l2reason"]`` holds per-layer
    mean norms, the ℓ2 scores, the selection and what the interventions did;
    ``usage_metadata`` counts every candidate's tokens.
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

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        unknown = sorted(set(kwargs) - set(_CALL_KWARGS))
        if unknown:
            raise ConfigError(
                f"ChatL2Reason does not take {', '.join(unknown)} per call; it takes {', '.join(_CALL_KWARGS)} "
                "(and stop). Tools and structured output are not supported yet."
            )
        msgs = [_to_message(m, i) for i, m in enumerate(messages)]
        sel = SelectionSpec(method=self.selection, score=self.score) if self.selection else None
        req = GenerationRequest.build(
            messages=msgs,
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
        res = self._backend().generate(req)
        usage = {
            "input_tokens": res.candidates[0].prompt_tokens,
            "output_tokens": res.completion_tokens,
            "total_tokens": res.candidates[0].prompt_tokens + res.completion_tokens,
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

        chosen = [res.candidates[res.chosen_index]] if sel is not None else res.candidates
        gens = []
        for c in chosen:
            info = {
                "model_id": res.model_id,
                "selection": res.selection,
                "candidates": [meta(x) for x in res.candidates] if sel is not None else None,
                **meta(c),
            }
            msg = AIMessage(
                content=c.text,
                response_metadata={"model_name": res.model_id, "finish_reason": c.finish_reason, "l2reason": info},
                usage_metadata=usage,  # type: ignore[arg-type]
            )
            gens.append(ChatGeneration(message=msg, generation_info={"l2reason": info}))
        return ChatResult(generations=gens, llm_output={"model_id": res.model_id, "seconds": res.seconds})
