"""The engine behind dspy.LM on the tiny random model: requests, cache, rollouts, threads, save/load."""

from __future__ import annotations

import json

import pytest

dspy = pytest.importorskip("dspy")

from dspy.lm15 import Config, Message, Request  # noqa: E402

import l2reason.dspy as l2  # noqa: E402
from l2reason.errors import ConfigError  # noqa: E402


@pytest.fixture()
def lm(tiny_backend):
    return l2.l2_lm(backend=tiny_backend, max_tokens=8, cache=False)


def _req(lm, text="hello world", **cfg):
    meta = cfg.pop("l2", None)
    ext = {"metadata": {"l2reason": meta}} if meta is not None else None
    return Request(model=lm.model, messages=(Message.user(text),), config=Config(extensions=ext, **cfg))


def test_import_l2reason_does_not_import_dspy():
    import subprocess
    import sys

    code = "import sys, l2reason; l2reason.__version__; print('dspy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_engine_serves_request_with_summary(lm, tiny_backend):
    r = lm(_req(lm, max_tokens=6, l2={"n": 3}, temperature=0.9))
    pd = r.provider_data["l2reason"]
    assert pd["n"] == 3 and len(pd["candidates"]) == 3
    assert r.text == pd["candidates"][pd["chosen"]]["text"]
    assert pd["selection"]["method"] == "l2"
    assert set(pd["scores"]) == {"A/T", "B/T", "C/T", "D/T", "z_mean"}
    assert pd["layers"] and len(pd["tau"]) == len(pd["layers"])
    # compact: no per-token arrays unless asked
    assert all("per_token" not in c for c in pd["candidates"])
    assert r.usage.output_tokens == sum(c["completion_tokens"] for c in pd["candidates"])
    assert r.usage.input_tokens > 0
    json.dumps(r.provider_data)


def test_per_token_on_request(lm):
    r = lm(_req(lm, max_tokens=5, l2={"per_token": True}))
    c = r.provider_data["l2reason"]["candidates"][0]
    assert len(c["per_token"]) == c["completion_tokens"]


def test_chat_messages_system_and_stop(lm, tiny_backend):
    from l2reason.backends.base import GenerationRequest, SamplingParams

    req = Request(
        model=lm.model,
        system="assistant",
        messages=(Message.user("hello"), Message.assistant("world"), Message.user("?")),
        config=Config(max_tokens=6, temperature=0.0),
    )
    gen, _ = lm.engine.build_request(req)
    assert [m.role for m in gen.messages] == ["system", "user", "assistant", "user"]
    # the engine's text equals the backend's greedy text for the same messages
    ref = tiny_backend.generate(
        GenerationRequest(messages=list(gen.messages), sampling=SamplingParams(max_new_tokens=6))
    )
    assert lm(req).text == ref.text
    word = ref.text.split()[1]
    stopped = lm(
        Request(model=lm.model, messages=req.messages, system="assistant", config=Config(max_tokens=6, stop=(word,)))
    )
    assert word not in stopped.text and ref.text.startswith(stopped.text.strip())


def test_cache_returns_same_provider_data(tiny_backend, tmp_path):
    lm = l2.l2_lm(backend=tiny_backend, max_tokens=6, cache=True)
    req = _req(lm, "w1 w2 w3", l2={"n": 2}, temperature=1.0)
    a = lm(req)
    b = lm(req)
    assert a.provider_data == b.provider_data
    assert b.text == a.text
    # metadata is part of the key: different settings, a new call
    c = lm(_req(lm, "w1 w2 w3", l2={"n": 3}, temperature=1.0))
    assert c.provider_data["l2reason"]["n"] == 3


def test_rollout_ids_give_different_samples(tiny_backend):
    lm = l2.l2_lm(backend=tiny_backend, max_tokens=10, temperature=1.0, cache=True)
    texts = {lm.copy(rollout_id=i)("hello world w1")[0] for i in range(4)}
    assert len(texts) >= 3
    # same rollout, cache on: the same text back
    assert lm.copy(rollout_id=1)("hello world w1") == lm.copy(rollout_id=1)("hello world w1")


def test_fresh_engines_replay_the_same_samples(tiny_backend):
    a = l2.l2_lm(backend=tiny_backend, max_tokens=8, temperature=1.0, cache=False)
    b = l2.l2_lm(backend=tiny_backend, max_tokens=8, temperature=1.0, cache=False)
    assert [a("w5 w6")[0] for _ in range(3)] == [b("w5 w6")[0] for _ in range(3)]


def test_bad_settings_are_clear(lm):
    with pytest.raises(ConfigError, match="unknown score"):
        l2.l2_lm(backend=lm.engine.backend, score="E/T")
    with pytest.raises(ConfigError, match="n"):
        l2.L2CallSettings.parse({"n": 0})
    with pytest.raises(ConfigError, match="extra"):
        l2.L2CallSettings.parse({"nn": 2})
    with pytest.raises(Exception, match="invalid l2reason call settings"):
        lm(_req(lm, l2={"n": 0}))


def test_save_load_round_trip(lm, tmp_path):
    prog = dspy.ChainOfThought("question -> answer")
    prog.set_lm(lm)
    path = tmp_path / "prog.json"
    prog.save(str(path))
    state = json.loads(path.read_text())
    assert "l2reason" in json.dumps(state)
    loaded = dspy.ChainOfThought("question -> answer")
    loaded.load(str(path), allow_unsafe_lm_state=True)
    lm2 = loaded.predict.lm
    assert isinstance(lm2.engine, l2.L2Engine)
    assert lm2.engine.name == lm.engine.name
    assert lm2.engine.backend is lm.engine.backend  # found by name in the registry
    assert lm2.engine.dump_state() == lm.engine.dump_state()
    req = _req(lm2, "w1", max_tokens=4)
    assert lm2(req).text == lm(req).text


def test_async_engine(lm):
    import asyncio

    async def go():
        return await lm.acall("hello w2")

    assert asyncio.run(go()) == lm("hello w2")


def test_engine_streams_tokens_as_they_decode(tiny_backend):
    """stream(): start, several text deltas that join to complete()'s text, an end with the same summary."""
    lm_s = l2.l2_lm(backend=tiny_backend, max_tokens=8, cache=False)
    lm_c = l2.l2_lm(backend=tiny_backend, max_tokens=8, cache=False)  # a fresh engine: the same sample stream
    req = _req(lm_s, "stream me", max_tokens=8, temperature=0.9)
    events = list(lm_s.engine.stream(req))
    whole = lm_c.engine.complete(req)
    kinds = [e.type for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and set(kinds[1:-1]) == {"delta"}
    deltas = [e.delta.text for e in events if e.type == "delta"]
    assert len(deltas) >= 2  # token by token, not one block at the end
    assert "".join(deltas) == whole.text
    end = events[-1]
    timeless = [
        {k: v for k, v in pd["l2reason"].items() if k != "seconds"} for pd in (end.provider_data, whole.provider_data)
    ]
    assert timeless[0] == timeless[1] and end.usage == whole.usage


def test_engine_stream_with_n_gt_1_is_one_delta(tiny_backend):
    lm_s = l2.l2_lm(backend=tiny_backend, max_tokens=6, cache=False)
    lm_c = l2.l2_lm(backend=tiny_backend, max_tokens=6, cache=False)
    req = _req(lm_s, "choose", max_tokens=6, temperature=0.9, l2={"n": 3})
    events = list(lm_s.engine.stream(req))
    deltas = [e.delta.text for e in events if e.type == "delta"]
    assert len(deltas) == 1 and deltas[0] == lm_c.engine.complete(req).text
    assert events[-1].provider_data["l2reason"]["n"] == 3


def test_async_engine_streams_and_stops_early(tiny_backend):
    import asyncio

    lm_s = l2.l2_lm(backend=tiny_backend, max_tokens=8, cache=False)
    lm_c = l2.l2_lm(backend=tiny_backend, max_tokens=8, cache=False)
    req = _req(lm_s, "async stream", max_tokens=8, temperature=0.9)

    async def collect(limit=None):
        out = []
        agen = (lm_s if limit is None else lm_c)._async_engine_spec.stream(req)
        async for e in agen:
            out.append(e)
            if limit is not None and len(out) >= limit:
                break
        await agen.aclose()
        return out

    events = asyncio.run(collect())
    deltas = "".join(e.delta.text for e in events if e.type == "delta")
    assert len(events) >= 4 and events[-1].type == "end"
    assert deltas == l2.l2_lm(backend=tiny_backend, max_tokens=8, cache=False).engine.complete(req).text
    # stopping early leaves the backend usable: no lock held, no hooks left
    asyncio.run(collect(limit=2))
    assert not any(m._forward_hooks for m in tiny_backend.model.modules())
    lm_d = l2.l2_lm(backend=tiny_backend, max_tokens=4, cache=False)
    assert lm_d.engine.complete(_req(lm_d, "after", max_tokens=4)).text is not None


def test_engine_stream_maps_config_errors(lm):
    from dspy.lm15 import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="n"):
        list(lm.engine.stream(_req(lm, l2={"n": 0})))
