"""Hidden-state collection (``GenerationRequest.collect``) on the tiny model.

The collected vectors are the states the norms are taken of: ‖states[t, j]‖
equals the reported per-token norm of layer ``layers[j]`` at step ``t``.
"""

from __future__ import annotations

import numpy as np
import pytest

from l2reason.backends.base import Capabilities, CollectSpec, GenerationRequest, NormSpec, SamplingParams
from l2reason.backends.validate import ModelLimits, validate_requests
from l2reason.errors import CapabilityError, ConfigError
from l2reason.limits import MAX_COLLECT_BYTES


def _req(collect: CollectSpec | None, n: int = 3, max_new: int = 7, **kw):
    return GenerationRequest(
        prompt="w1 w2 w3 hello",
        n=n,
        sampling=SamplingParams(temperature=1.0, max_new_tokens=max_new, seed=3),
        norms=NormSpec(layers="all"),
        collect=collect,
        **kw,
    )


def test_decode_states_are_the_norms_source(tiny_backend) -> None:
    res = tiny_backend.generate(_req(CollectSpec(layers=[1, 3], positions="decode")))
    for c in res.candidates:
        st = c.states
        assert st is not None and st.layers == [1, 3] and st.positions == "decode"
        assert st.array.shape == (c.completion_tokens, 2, tiny_backend.hidden_size)
        assert st.array.dtype == np.float32
        norms = c.norms.array()  # [T, 4] (layers 0..3)
        np.testing.assert_allclose(np.linalg.norm(st.array, axis=-1), norms[:, [1, 3]], rtol=1e-5, atol=1e-6)


def test_collect_changes_nothing_else(tiny_backend) -> None:
    plain = tiny_backend.generate(_req(None))
    coll = tiny_backend.generate(_req(CollectSpec(layers="all")))
    for a, b in zip(plain.candidates, coll.candidates, strict=True):
        assert a.text == b.text and a.norms.per_token == b.norms.per_token
        assert a.states is None


def test_last_and_mean_and_float16(tiny_backend) -> None:
    dec = tiny_backend.generate(_req(CollectSpec(layers=[2], positions="decode")))
    last = tiny_backend.generate(_req(CollectSpec(layers=[2], positions="last")))
    mean = tiny_backend.generate(_req(CollectSpec(layers=[2], positions="mean", dtype="float16")))
    for d, la, me in zip(dec.candidates, last.candidates, mean.candidates, strict=True):
        assert la.states.array.shape == (1, tiny_backend.hidden_size)
        np.testing.assert_allclose(la.states.array, d.states.array[-1], rtol=1e-6)
        assert me.states.array.dtype == np.float16
        np.testing.assert_allclose(me.states.array, d.states.array.mean(0), rtol=2e-3, atol=2e-3)


def test_states_stay_out_of_json_and_save_beside_it(tiny_backend, tmp_path) -> None:
    c = tiny_backend.generate(_req(CollectSpec(layers=[0]), n=1)).candidates[0]
    js = c.model_dump_json()
    assert '"states":{"layers":[0],"positions":"decode"}' in js.replace(" ", "")
    p = c.states.save(tmp_path / "c0.npy")
    np.testing.assert_array_equal(np.load(p), c.states.array)


def test_memory_bound_is_a_clear_error(tiny_backend, monkeypatch) -> None:
    import l2reason.limits

    d = tiny_backend.hidden_size
    need = 3 * 7 * 4 * d * 4  # n x max_new_tokens x layers x d x float32 bytes
    req = _req(CollectSpec(layers="all"), n=3, max_new=7)
    monkeypatch.setattr(l2reason.limits, "MAX_COLLECT_BYTES", need)
    validate_requests([req], tiny_backend.limits())  # exactly at the bound: accepted
    monkeypatch.setattr(l2reason.limits, "MAX_COLLECT_BYTES", need - 1)
    with pytest.raises(ConfigError, match=r"collect would hold .* at most .* MiB per request: collect fewer layers"):
        tiny_backend.generate(req)
    # float16 halves it; positions="mean" keeps one vector per row
    validate_requests(
        [req.model_copy(update={"collect": CollectSpec(layers="all", dtype="float16")})], tiny_backend.limits()
    )
    validate_requests(
        [req.model_copy(update={"collect": CollectSpec(layers="all", positions="mean")})], tiny_backend.limits()
    )
    # two requests each under the bound, together over it
    half = _req(CollectSpec(layers="all"), n=2, max_new=7)
    with pytest.raises(ConfigError, match="in one call"):
        validate_requests([half, half], tiny_backend.limits())
    assert MAX_COLLECT_BYTES == 2 * 1024**3


def test_backend_without_hidden_states_refuses() -> None:
    lim = ModelLimits(
        num_layers=4, hidden_size=32, context_length=None, vocab_size=None, capabilities=Capabilities(name="sglang")
    )
    with pytest.raises(CapabilityError, match="cannot return hidden states"):
        validate_requests([_req(CollectSpec())], lim)
    validate_requests([_req(None)], lim)


def test_bad_layers_refused(tiny_backend) -> None:
    with pytest.raises(ConfigError):
        tiny_backend.generate(_req(CollectSpec(layers=[7])))
    with pytest.raises(ValueError, match="must not repeat"):
        CollectSpec(layers=[1, 1])
