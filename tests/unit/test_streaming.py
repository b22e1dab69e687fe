"""Token streaming: ``generate_stream`` / ``agenerate_stream`` on the tiny model, LangChain ``stream``, ``ask --stream``."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from l2reason.backends.base import GenerationRequest, NormSpec, SamplingParams, SelectionSpec
from l2reason.backends.hf import HFBackend


def _req(n: int = 1, temperature: float = 0.0, max_new: int = 12, stop: list[str] | None = None, **kw):
    return GenerationRequest(
        prompt="hello w1 w2 w3",
        n=n,
        sampling=SamplingParams(temperature=temperature, max_new_tokens=max_new, seed=3, stop=stop or []),
        norms=NormSpec(layers=[0, 2, 3]),
        **kw,
    )


def _by_candidate(events):
    texts: dict[int, str] = {}
    norms: dict[int, list] = {}
    ids: dict[int, list] = {}
    finish: dict[int, str] = {}
    for ev in events:
        if ev.kind == "result":
            continue
        j = ev.candidate
        assert j not in finish, "an event after the candidate's finish"
        texts[j] = texts.get(j, "") + ev.text
        norms.setdefault(j, []).extend(ev.norms or [])
        ids.setdefault(j, []).extend(ev.token_ids)
        if ev.kind == "finish":
            finish[j] = ev.finish_reason
    return texts, norms, ids, finish


def _hooks(backend: HFBackend) -> int:
    n = 0
    for layer in backend.layers:
        n += len(layer._forward_hooks) + len(layer._forward_pre_hooks)
        mlp = getattr(layer, "mlp", None)
        if mlp is not None:
            n += len(mlp._forward_hooks)
    return n


@pytest.mark.parametrize(
    "kw",
    [
        dict(n=1),
        dict(n=3, temperature=0.9),
        dict(n=3, temperature=0.9, selection=SelectionSpec(method="l2")),
        dict(n=2, temperature=0.9, stop=["w5"], max_new=30),
    ],
)
def test_deltas_join_to_generate(tiny_backend, kw):
    req = _req(**kw)
    events = list(tiny_backend.generate_stream(req))
    assert events[-1].kind == "result" and sum(ev.kind == "result" for ev in events) == 1
    streamed = events[-1].result
    plain = tiny_backend.generate(req)
    texts, norms, ids, finish = _by_candidate(events)
    assert len(streamed.candidates) == req.n
    for c, p in zip(streamed.candidates, plain.candidates, strict=True):
        assert c.text == p.text == texts[c.index]
        assert finish[c.index] == c.finish_reason == p.finish_reason
        assert len(ids[c.index]) == c.completion_tokens
        np.testing.assert_allclose(np.asarray(norms[c.index]), c.norms.array(), rtol=0, atol=0)
        np.testing.assert_allclose(c.norms.array(), p.norms.array(), rtol=1e-5, atol=1e-5)
    assert streamed.selection == plain.selection
    assert any(ev.kind == "delta" for ev in events)
    assert sum(ev.kind == "delta" and ev.text != "" for ev in events) > req.n  # more than one piece per candidate


def test_stop_string_never_leaks(tiny_backend):
    # find a word the greedy answer contains, then stop on it: no delta may show it
    full = tiny_backend.generate(_req(max_new=20)).candidates[0].text
    words = full.split()
    assert len(words) > 3
    stop = words[3]
    events = list(tiny_backend.generate_stream(_req(max_new=20, stop=[stop])))
    res = events[-1].result
    assert res.candidates[0].finish_reason == "stop"
    joined = ""
    for ev in events[:-1]:
        joined += ev.text
        assert stop not in joined
    assert joined == res.candidates[0].text


def test_close_early_stops_decoding_and_removes_hooks(tiny_backend):
    base = _hooks(tiny_backend)  # transformers may keep its own output-recording hooks on the layers
    calls = []
    handle = tiny_backend.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        tiny_backend.generate(_req(max_new=30))
        full = len(calls)
        calls.clear()
        gen = tiny_backend.generate_stream(_req(max_new=30))
        first = next(gen)
        assert first.kind == "delta"
        assert _hooks(tiny_backend) > base  # the capture hooks are on while it streams
        gen.close()
        assert len(calls) < full / 2
        assert _hooks(tiny_backend) == base
        assert tiny_backend._lock.acquire(blocking=False)  # released
        tiny_backend._lock.release()
    finally:
        handle.remove()
    # the backend works normally afterwards: same as a fresh backend
    again = tiny_backend.generate(_req(n=3, temperature=0.9))
    fresh = HFBackend(tiny_backend.loaded).generate(_req(n=3, temperature=0.9))
    assert [c.text for c in again.candidates] == [c.text for c in fresh.candidates]


def test_open_stream_blocks_same_thread_calls(tiny_backend):
    from l2reason.errors import BackendError

    with contextlib.closing(tiny_backend.generate_stream(_req())) as gen:
        next(gen)
        with pytest.raises(BackendError, match="unfinished generate_stream"):
            tiny_backend.generate(_req())
    assert tiny_backend.generate(_req()).candidates[0].text
    for ev in tiny_backend.generate_stream(_req()):  # at the result event the backend is free again
        if ev.kind == "result":
            assert tiny_backend.generate(_req()).candidates[0].text == ev.result.candidates[0].text


def test_bad_request_raises_at_call(tiny_backend):
    from l2reason.errors import ConfigError

    with pytest.raises(ConfigError):
        tiny_backend.generate_stream(GenerationRequest(prompt="hello", norms=NormSpec(layers=[99])))


def test_async_stream_and_cancel(tiny_backend):
    async def collect():
        return [ev async for ev in tiny_backend.agenerate_stream(_req(n=3, temperature=0.9))]

    events = asyncio.run(collect())
    texts, _, _, _ = _by_candidate(events)
    res = events[-1].result
    assert [texts[c.index] for c in res.candidates] == [c.text for c in res.candidates]

    base = _hooks(tiny_backend)
    calls = []
    handle = tiny_backend.model.register_forward_pre_hook(lambda *a: calls.append(1))

    async def cancel():
        got = asyncio.Event()

        async def consume():
            async for _ in tiny_backend.agenerate_stream(_req(max_new=200)):
                got.set()
                await asyncio.sleep(0)

        task = asyncio.create_task(consume())
        await got.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(cancel())
    finally:
        handle.remove()
    assert len(calls) < 150
    assert _hooks(tiny_backend) == base
    assert tiny_backend.generate(_req()).candidates[0].finish_reason


def test_events_from_result_fallback(tiny_backend):
    from l2reason.backends.common import events_from_result

    res = tiny_backend.generate(_req(n=2, temperature=0.9))
    texts, norms, _, finish = _by_candidate(list(events_from_result(res)))
    for c in res.candidates:
        assert texts[c.index] == c.text and finish[c.index] == c.finish_reason
        assert norms[c.index] == c.norms.per_token


# ---- LangChain ----------------------------------------------------------------------------------------


def test_langchain_stream(tiny_backend):
    pytest.importorskip("langchain_core")
    from l2reason.langchain import ChatL2Reason

    llm = ChatL2Reason(backend=tiny_backend, max_tokens=12)
    chunks = list(llm.stream("hello w1 w2"))
    msg = llm.invoke("hello w1 w2")
    assert len(chunks) > 1
    assert "".join(c.content for c in chunks) == msg.content
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.content == msg.content
    assert total.usage_metadata == msg.usage_metadata
    meta = chunks[-1].response_metadata["l2reason"]
    assert meta["mean_norm"] == msg.response_metadata["l2reason"]["mean_norm"]
    per_token = [row for c in chunks for row in c.response_metadata["l2reason"].get("norms") or []]
    assert len(per_token) == msg.response_metadata["l2reason"]["completion_tokens"]

    async def astream():
        return [c async for c in llm.astream("hello w1 w2")]

    achunks = asyncio.run(astream())
    assert len(achunks) > 1 and "".join(c.content for c in achunks) == msg.content


def test_langchain_stream_tools_fall_back_to_one_chunk(tiny_backend):
    pytest.importorskip("langchain_core")
    from l2reason.langchain import ChatL2Reason

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    llm = ChatL2Reason(backend=tiny_backend, max_tokens=8).bind_tools([add])
    chunks = list(llm.stream("hello w1"))
    assert len(chunks) == 1


# ---- CLI ----------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_cli(tiny, monkeypatch):
    import l2reason.backends.shared as shared

    original = shared.make_backend
    monkeypatch.setattr(
        shared, "make_backend", lambda spec, *a, **kw: HFBackend(tiny) if spec == "tiny" else original(spec, *a, **kw)
    )
    return "tiny"


def test_ask_stream(tiny_cli, tiny_backend):
    from typer.testing import CliRunner

    from l2reason.cli import app

    res = CliRunner().invoke(app, ["ask", "hello w1 w2", "--model", tiny_cli, "--max-new-tokens", "10", "--stream"])
    assert res.exit_code == 0, res.output
    from l2reason.cli._common import chat_request

    text = tiny_backend.generate(chat_request("hello w1 w2", 10, 0.0, 0)).text
    assert text in res.output
    assert "Traceback" not in res.output
    assert "layer" in res.output  # the summary table follows
    plain = CliRunner().invoke(app, ["ask", "hello w1 w2", "--model", tiny_cli, "--max-new-tokens", "10"])
    assert plain.exit_code == 0 and text in plain.output


def test_held_back():
    from l2reason.backends.hf.backend import _held_back

    assert _held_back("abc", []) == 0
    assert _held_back("the an", ["answer"]) == 2
    assert _held_back("the answ", ["answer", "w"]) == 4
    assert _held_back("xyz", ["answer"]) == 0
    assert _held_back("a STOP", ["STOP"]) == 4


class _PartialBytes:
    """A tokenizer whose decode ends in U+FFFD (an incomplete character) after an odd number of tokens."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, *a, **kw):
        return self._tok(*a, **kw)

    def decode(self, ids, **kw):
        text = self._tok.decode(ids, **kw)
        return text + "\ufffd" if len(ids) % 2 else text


def test_incomplete_characters_are_held_back(tiny):
    be = HFBackend(tiny)
    be.tokenizer = _PartialBytes(tiny.tokenizer)
    events = list(be.generate_stream(_req(max_new=10)))
    deltas = [ev.text for ev in events if ev.kind == "delta"]
    assert deltas and all("\ufffd" not in d for d in deltas)
    texts, norms, ids, _ = _by_candidate(events)
    res = events[-1].result
    assert texts[0] == res.candidates[0].text  # 10 tokens: the final text is whole
    assert len(ids[0]) == len(norms[0]) == 10


def test_sglang_streams_one_delta_per_candidate_at_the_end(tiny_backend):
    import types

    from l2reason.backends.sglang.client import SGLangBackend

    res = tiny_backend.generate(_req(n=2, temperature=0.9))
    stub = types.SimpleNamespace(generate=lambda r: res)
    events = list(SGLangBackend.generate_stream(stub, _req(n=2, temperature=0.9)))  # type: ignore[arg-type]
    assert [ev.kind for ev in events] == ["delta", "finish", "delta", "finish", "result"]
    assert events[-1].result is res

    async def collect():
        return [ev async for ev in SGLangBackend.agenerate_stream(stub, _req())]  # type: ignore[arg-type]

    assert asyncio.run(collect())[-1].result is res


def test_stream_event_is_exported():
    import l2reason

    assert l2reason.StreamEvent.model_fields["kind"].annotation is not None
