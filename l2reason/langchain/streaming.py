"""``stream``/``astream``: the backend's stream events as LangChain ``ChatGenerationChunk``\\ s.

Each token chunk's ``response_metadata["l2reason"]`` has its ``token_ids``
and their ``norms`` (lists, so LangChain's chunk addition concatenates them);
the last chunk (empty content) carries the whole message's metadata (ℓ2
summary, as in ``invoke``) and ``usage_metadata``. With tools bound or
``n > 1``, or on a backend that cannot stream, the whole message comes as one
chunk at the end (tool calls are parsed from the complete answer).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk

from l2reason.backends.base import GenerationResult, StreamEvent
from l2reason.langchain.results import Call, chat_result


def streams(call: Call, backend: Any) -> bool:
    """Whether this call streams token by token: one candidate, no tool parsing, a streaming backend."""
    return not call.parse and call.req.n == 1 and callable(getattr(backend, "generate_stream", None))


def delta_chunk(ev: StreamEvent) -> ChatGenerationChunk:
    """A chunk of newly decoded text with its tokens and their norms."""
    info = {"token_ids": ev.token_ids, "norms": ev.norms}  # lists: joining chunks concatenates them
    return ChatGenerationChunk(
        message=AIMessageChunk(content=ev.text, response_metadata={"l2reason": info}),
        generation_info={"l2reason": info},
    )


def final_chunk(res: GenerationResult, call: Call, streamed: bool) -> ChatGenerationChunk:
    """The last chunk: the whole message's metadata (ℓ2 summary, usage); its content (and tool calls) only
    when nothing was streamed before."""
    gen = chat_result(res, call).generations[0]
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


def stream_chunks(
    backend: Any, call: Call, run_manager: CallbackManagerForLLMRun | None
) -> Iterator[ChatGenerationChunk]:
    """The chunks of one streamed call (``backend.generate_stream``); closing the iterator stops decoding."""
    with contextlib.closing(backend.generate_stream(call.req)) as events:
        for ev in events:
            if ev.kind == "result":
                yield final_chunk(ev.result, call, streamed=True)
            elif ev.text or ev.token_ids:
                chunk = delta_chunk(ev)
                if run_manager is not None:
                    run_manager.on_llm_new_token(ev.text, chunk=chunk)
                yield chunk


async def astream_chunks(
    backend: Any, call: Call, run_manager: AsyncCallbackManagerForLLMRun | None
) -> AsyncIterator[ChatGenerationChunk]:
    """:func:`stream_chunks` for asyncio (``backend.agenerate_stream``); cancelling stops decoding."""
    events = backend.agenerate_stream(call.req)
    try:
        async for ev in events:
            if ev.kind == "result":
                yield final_chunk(ev.result, call, streamed=True)
            elif ev.text or ev.token_ids:
                chunk = delta_chunk(ev)
                if run_manager is not None:
                    await run_manager.on_llm_new_token(ev.text, chunk=chunk)
                yield chunk
    finally:
        await events.aclose()
