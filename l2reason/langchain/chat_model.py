"""``ChatL2Reason``: a LangChain chat model (``BaseChatModel``) on any l2reason backend.

One call goes: LangChain messages -> l2reason messages
(:mod:`~l2reason.langchain.messages`; with tools bound, a prompt rendered by
the chat template, :mod:`~l2reason.langchain.tools`) -> one
:class:`~l2reason.backends.base.GenerationRequest` -> the backend -> a
``ChatResult`` (:mod:`~l2reason.langchain.results`). ``ainvoke`` runs the
backend call in a worker thread; ``stream``/``astream`` are in
:mod:`~l2reason.langchain.streaming`, the one-backend-call batches in
:mod:`~l2reason.langchain.batching`, structured output in
:mod:`~l2reason.langchain.structured`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult, LLMResult
from langchain_core.runnables import Runnable
from langchain_core.runnables.config import RunnableConfig
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from l2reason.backends.base import GenerationRequest, GenerationResult, NormSpec, SamplingParams, SelectionSpec
from l2reason.backends.shared import get_backend
from l2reason.errors import ConfigError
from l2reason.langchain.batching import (
    chunk_ranges,
    generate_many,
    kwargs_for_request,
    prefetched,
    take_prefetched,
)
from l2reason.langchain.messages import stop_list, to_message
from l2reason.langchain.results import Call, chat_result
from l2reason.langchain.streaming import astream_chunks, final_chunk, stream_chunks, streams
from l2reason.langchain.structured import structured_runnable
from l2reason.langchain.tools import openai_tools, render_prompt, tool_name, tool_plan

_CALL_KWARGS = ("n", "temperature", "top_p", "max_tokens", "seed", "tools", "tool_choice")
# Set by LangChain's own wrappers (with_structured_output, tracing); not a generation setting.
_IGNORED_KWARGS = ("ls_structured_output_format", "structured_output_format")


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

    Example:
        >>> from l2reason.langchain import ChatL2Reason
        >>> llm = ChatL2Reason(model="default", n=4, selection="l2", temperature=0.7)  # doctest: +SKIP
        >>> msg = llm.invoke("What is 17 * 23?")  # doctest: +SKIP
        >>> msg.response_metadata["l2reason"]["selection"]["index"]  # doctest: +SKIP
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
    def _request(self, messages: list[BaseMessage], stop: Any, kwargs: dict[str, Any]) -> Call:
        """The backend request for one call and how to read its answer."""
        kwargs = {k: v for k, v in kwargs.items() if k not in _IGNORED_KWARGS}
        unknown = sorted(set(kwargs) - set(_CALL_KWARGS))
        if unknown:
            raise ConfigError(
                f"ChatL2Reason does not take {', '.join(unknown)} per call; it takes {', '.join(_CALL_KWARGS)} "
                "(and stop)"
            )
        msgs = [to_message(m, i) for i, m in enumerate(messages)]
        tools = openai_tools(kwargs.get("tools"))
        parse, prefix = tool_plan(tools, kwargs.get("tool_choice"))
        sel = SelectionSpec(method=self.selection, score=self.score) if self.selection else None
        common: dict[str, Any] = dict(
            n=kwargs.get("n", self.n),
            sampling=SamplingParams(
                temperature=kwargs.get("temperature", self.temperature),
                top_p=kwargs.get("top_p", self.top_p),
                max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
                stop=stop_list(stop),
                seed=kwargs.get("seed", self.seed),
            ),
            norms=NormSpec(layers=self.norm_layers, per_token=True),  # type: ignore[arg-type]
            logprobs=5 if sel is not None else None,
            interventions=self.interventions,
            selection=sel,
        )
        if parse:
            prompt = render_prompt(getattr(self._backend(), "tokenizer", None), msgs, tools, prefix)
            names = tuple(tool_name(t) for t in tools)
            return Call(GenerationRequest.build(prompt=prompt, **common), True, prefix, names)
        return Call(GenerationRequest.build(messages=msgs, **common))

    def _run(self, req: GenerationRequest) -> GenerationResult:
        """The result of ``req``: generated ahead by this batch's backend call, else generated now."""
        backend = self._backend()
        res = take_prefetched(backend, req)
        return res if res is not None else backend.generate(req)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._request(messages, stop, kwargs)
        return chat_result(self._run(call.req), call)

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
        return chat_result(res, call)

    # ---- streaming (see l2reason.langchain.streaming) ------------------
    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._request(messages, stop, kwargs)
        if not streams(call, self._backend()):  # tools, n > 1: the whole message as one chunk
            yield final_chunk(self._run(call.req), call, streamed=False)
            return
        yield from stream_chunks(self._backend(), call, run_manager)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        call = self._request(messages, stop, kwargs)
        backend = self._backend()
        if not streams(call, backend) or not callable(getattr(backend, "agenerate_stream", None)):
            res = await asyncio.to_thread(self._run, call.req)
            yield final_chunk(res, call, streamed=False)
            return
        async for chunk in astream_chunks(backend, call, run_manager):
            yield chunk

    # ---- batches: every input in one backend call (see l2reason.langchain.batching)
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

    def _batch_requests(self, inputs: list[Any], kwargs: dict[str, Any]) -> list[Any] | None:
        """The requests of a ``batch``'s inputs, or None when the batch is not generated ahead."""
        try:
            prompts = [self._convert_input(x).to_messages() for x in inputs]
        except Exception:
            return None  # the per-input runs report bad inputs
        return self._prefetch_requests(prompts, kwargs) if self._use_prefetch(len(inputs)) else None

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
        reqs = self._batch_requests(inputs, kwargs)
        if reqs is None:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        backend = self._backend()
        results = [r for a, b in chunk_ranges(inputs, config) for r in generate_many(backend, reqs[a:b])]
        with prefetched(backend, reqs, results):
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """``batch`` for asyncio: one ``generate_many`` call in a worker thread, then LangChain's ``abatch``."""
        reqs = self._batch_requests(inputs, kwargs)
        if reqs is None:
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        backend = self._backend()
        results: list[Any] = []
        for a, b in chunk_ranges(inputs, config):
            results += await asyncio.to_thread(generate_many, backend, reqs[a:b])
        with prefetched(backend, reqs, results):
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    def generate(
        self, messages: list[list[BaseMessage]], stop: list[str] | None = None, *args: Any, **kwargs: Any
    ) -> LLMResult:
        """LangChain's ``generate``; several prompts go to the backend in one ``generate_many`` call."""
        if not self._use_prefetch(len(messages)):
            return super().generate(messages, stop, *args, **kwargs)
        reqs = self._prefetch_requests(messages, {**kwargs_for_request(kwargs), "stop": stop})
        backend = self._backend()
        with prefetched(backend, reqs, generate_many(backend, reqs)):
            return super().generate(messages, stop, *args, **kwargs)

    async def agenerate(
        self, messages: list[list[BaseMessage]], stop: list[str] | None = None, *args: Any, **kwargs: Any
    ) -> LLMResult:
        """LangChain's ``agenerate``; several prompts go to the backend in one ``generate_many`` call."""
        if not self._use_prefetch(len(messages)):
            return await super().agenerate(messages, stop, *args, **kwargs)
        reqs = self._prefetch_requests(messages, {**kwargs_for_request(kwargs), "stop": stop})
        backend = self._backend()
        results = await asyncio.to_thread(generate_many, backend, reqs)
        with prefetched(backend, reqs, results):
            return await super().agenerate(messages, stop, *args, **kwargs)

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
        formatted = openai_tools(tools)
        tool_plan(formatted, tool_choice)  # fail now, not at the first call
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
        that does not parse or fit raises
        :class:`~l2reason.langchain.structured.StructuredOutputError` (an
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
        return structured_runnable(self, schema, include_raw, method, kwargs)
