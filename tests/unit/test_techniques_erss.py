"""ERSS: bank, trigger, cooldown, cosine gate, injection formulas, row independence."""

from __future__ import annotations

import math

import pytest
import torch

from l2reason.errors import ConfigError
from l2reason.techniques.erss import ERSSState, erss_init, erss_params, erss_reset, erss_step
from l2reason.techniques.specs import ERSSSpec

INF = math.inf
KW = dict(gamma=1.0, S=40, p=0.2, C=32, c_min=0.5, beta=0.5, exact=False)


def _init(B: int = 1, M: int = 3, d: int = 2, seed: int = 0) -> ERSSState:
    seeds = torch.arange(B, dtype=torch.int64) + seed
    return erss_init(B, M, d, seeds, dtype=torch.float32, device="cpu")


def _step(st: ERSSState, x: list[list[float]], tau: list[float], valid: list[bool] | None = None, r=None, **kw):
    xt = torch.tensor(x, dtype=torch.float32)
    v = torch.ones(len(x), dtype=torch.bool) if valid is None else torch.tensor(valid)
    args = {**KW, **kw}
    return erss_step(st, xt, xt.norm(dim=-1), torch.tensor(tau), v, r=r, M=st.bank.shape[1], **args)


def test_bank_keeps_top_m_by_norm_above_tau() -> None:
    st = _init(M=3)
    for norm in [2.0, 5.0, 3.0, 0.5, 4.0, 6.0, 1.5, 4.0]:  # tau = 1: 0.5 never enters
        st = _step(st, [[norm, 0.0]], [1.0], p=0.0).state
    assert sorted(st.bank_norm[0].tolist()) == [4.0, 5.0, 6.0]
    assert sorted(st.bank[0, :, 0].tolist()) == [4.0, 5.0, 6.0]  # the states themselves
    assert st.step.tolist() == [8]


def test_bank_fills_empty_slots_first_and_ignores_low_norms() -> None:
    st = _init(M=3)
    st = _step(st, [[0.0, 2.0]], [1.0], p=0.0).state
    st = _step(st, [[0.9, 0.0]], [1.0], p=0.0).state  # ≤ τ: not stored
    assert st.bank_norm[0].tolist() == [2.0, -INF, -INF]
    assert st.bank[0].tolist() == [[0.0, 2.0], [0.0, 0.0], [0.0, 0.0]]


def test_warmup_stores_nothing_and_does_not_count_streak() -> None:
    st = _init()
    for _ in range(50):
        out = _step(st, [[5.0, 0.0]], [INF], S=1, p=1.0)
        st = out.state
        assert not out.fired.any()
    assert st.streak.tolist() == [0]
    assert torch.isinf(st.bank_norm).all()
    assert st.step.tolist() == [50]


def test_fires_exactly_after_s_low_steps() -> None:
    st = _step(_init(), [[4.0, 0.0]], [2.0], p=1.0, S=5).state  # one bank state, along x
    fired, injected, streaks = [], [], []
    for _ in range(7):
        out = _step(st, [[1.0, 0.0]], [2.0], p=1.0, S=5)
        st = out.state
        fired.append(bool(out.fired))
        injected.append(bool(out.injected))
        streaks.append(int(st.streak))
    assert fired == [False, False, False, False, True, False, False]
    assert injected == fired
    assert streaks == [1, 2, 3, 4, 0, 1, 2]  # reset on fire
    assert st.cooldown.tolist() == [30]  # C = 32, then two valid steps


def test_high_step_breaks_the_streak() -> None:
    st = _init()
    for x in [1.0, 1.0, 3.0, 1.0]:
        st = _step(st, [[x, 0.0]], [2.0], p=0.0).state
    assert st.streak.tolist() == [1]


def test_cooldown_blocks_c_steps() -> None:
    st = _step(_init(), [[4.0, 0.0]], [2.0], p=0.0).state
    pattern = []
    for _ in range(10):
        out = _step(st, [[1.0, 0.0]], [2.0], p=1.0, S=1, C=3)
        st = out.state
        pattern.append(bool(out.fired))
    assert pattern == [True, False, False, False, True, False, False, False, True, False]


def test_fire_without_injection_still_resets() -> None:
    st = _init()  # empty bank: nothing to inject
    pattern = []
    for _ in range(4):
        out = _step(st, [[1.0, 0.0]], [2.0], p=1.0, S=2, C=0)
        st = out.state
        pattern.append((bool(out.fired), bool(out.injected), float(out.cos)))
    assert pattern == [(False, False, -INF), (True, False, -INF), (False, False, -INF), (True, False, -INF)]


def test_bernoulli_rate() -> None:
    B, steps = 256, 200
    st = erss_init(B, 1, 2, torch.arange(B) * 7919, dtype=torch.float32, device="cpu")
    x = torch.tensor([[1.0, 0.0]]).repeat(B, 1)
    n, tau, ok = x.norm(dim=-1), torch.full((B,), 2.0), torch.ones(B, dtype=torch.bool)
    total = 0
    for _ in range(steps):
        out = erss_step(st, x, n, tau, ok, r=None, M=1, gamma=1.0, S=1, p=0.2, C=0, c_min=0.5, beta=0.5, exact=False)
        st = out.state
        total += int(out.fired.sum())
    assert abs(total / (B * steps) - 0.2) < 0.01


def test_cosine_gate() -> None:
    # bank holds [4, 3] (norm 5); x = [1, 0] ⇒ cos = 0.8
    st = _step(_init(), [[4.0, 3.0]], [2.0], p=0.0).state
    blocked = _step(st, [[1.0, 0.0]], [2.0], p=1.0, S=1, c_min=1.0 - 1e-6)
    assert blocked.fired.tolist() == [True] and blocked.injected.tolist() == [False]
    assert blocked.cos.tolist() == pytest.approx([0.8])
    assert torch.equal(blocked.x_out, torch.tensor([[1.0, 0.0]]))
    passed = _step(st, [[1.0, 0.0]], [2.0], p=1.0, S=1, c_min=0.8 - 1e-6)
    assert passed.injected.tolist() == [True]


def test_picks_the_most_similar_bank_state() -> None:
    st = _init(M=3)
    for v in ([0.0, 5.0], [4.0, 0.1], [-6.0, 0.0]):
        st = _step(st, [v], [2.0], p=0.0).state
    out = _step(st, [[1.0, 0.0]], [2.0], p=1.0, S=1, c_min=0.0, beta=1.0)
    assert out.x_out.tolist() == [[4.0, pytest.approx(0.1)]]  # β = 1 ⇒ x' = v*


def test_injection_formulas() -> None:
    st = _step(_init(), [[0.0, 2.0]], [1.0], p=0.0).state  # v = [0, 2]
    x, r = [[1.0, 0.0]], torch.tensor([[0.5, 0.5]])
    inter = _step(st, x, [2.0], p=1.0, S=1, c_min=-1.0, beta=0.5)
    assert inter.x_out.tolist() == [[0.5, 1.0]]  # (1 − β)x + βv*
    exact = _step(st, x, [2.0], r=r, p=1.0, S=1, c_min=-1.0, beta=0.5, exact=True)
    assert exact.x_out.tolist() == [[0.75, 0.75]]  # x + β(v* − r)


@pytest.mark.parametrize("exact", [False, True])
def test_beta_zero_is_identity(exact: bool) -> None:
    st = _step(_init(), [[3.0, 1.0]], [1.0], p=0.0).state
    x = [[0.3, 0.7]]
    out = _step(st, x, [2.0], r=torch.tensor([[9.0, -9.0]]), p=1.0, S=1, c_min=-1.0, beta=0.0, exact=exact)
    assert out.injected.tolist() == [True]
    assert torch.equal(out.x_out, torch.tensor(x))


def test_invalid_rows_are_untouched() -> None:
    st = _step(_init(B=2), [[4.0, 0.0], [4.0, 0.0]], [2.0, 2.0], p=0.0).state
    st = _step(st, [[1.0, 0.0], [1.0, 0.0]], [2.0, 2.0], p=0.0).state  # streak 1, 1
    x = [[1.0, 0.0], [9.0, 9.0]]
    out = _step(st, x, [2.0, 2.0], valid=[True, False], p=1.0, S=1, C=5)
    assert out.fired.tolist() == [True, False] and out.injected.tolist() == [True, False]
    assert torch.equal(out.x_out[1], torch.tensor([9.0, 9.0]))
    for name in ERSSState._fields:
        assert torch.equal(getattr(out.state, name)[1], getattr(st, name)[1]), name
    assert out.state.step.tolist() == [3, 2]


def test_rows_are_independent() -> None:
    g = torch.Generator().manual_seed(0)
    B, d, T = 2, 4, 60
    xs = torch.randn(T, B, d, generator=g) * torch.linspace(0.5, 2.0, T)[:, None, None]
    taus = torch.full((T, B), 1.5)
    taus[:5] = INF
    valid = torch.ones(T, B, dtype=torch.bool)

    params = {**KW, "M": 4, "gamma": 1.2, "S": 2, "p": 0.5, "C": 3, "c_min": 0.0, "exact": True}

    def run(xs: torch.Tensor, taus: torch.Tensor, valid: torch.Tensor, seeds: torch.Tensor):
        st = erss_init(B, 4, d, seeds, dtype=torch.float32, device="cpu")
        outs = []
        for t in range(T):
            o = erss_step(st, xs[t], xs[t].norm(dim=-1), taus[t], valid[t], r=xs[t] * 0.5, **params)
            st = o.state
            outs.append(o)
        return outs

    a = run(xs, taus, valid, torch.tensor([11, 12]))
    xs2, taus2, valid2 = xs.clone(), taus.clone(), valid.clone()
    xs2[:, 1] = torch.randn(T, d, generator=g) * 3
    taus2[:, 1] = 0.7
    valid2[::3, 1] = False
    b = run(xs2, taus2, valid2, torch.tensor([11, 999]))
    assert sum(int(o.injected[0]) for o in a) > 0  # the test exercises injection
    for oa, ob in zip(a, b, strict=True):
        assert torch.equal(oa.x_out[0], ob.x_out[0])
        assert oa.fired[0] == ob.fired[0] and oa.injected[0] == ob.injected[0]
        for name in ERSSState._fields:
            assert torch.equal(getattr(oa.state, name)[0], getattr(ob.state, name)[0]), name


def test_reset_and_errors() -> None:
    st = _step(_init(B=2), [[4.0, 0.0], [4.0, 0.0]], [2.0, 2.0], p=0.0).state
    st = erss_reset(st, torch.tensor([False, True]), torch.tensor([0, 77]))
    assert st.bank_norm[0].tolist() == [4.0, -INF, -INF]
    assert st.bank_norm[1].tolist() == [-INF] * 3
    assert st.seed.tolist() == [0, 77] and st.step.tolist() == [1, 0]
    with pytest.raises(ConfigError, match="needs r, the residual entering the layer's MLP"):
        _step(st, [[1.0, 0.0], [1.0, 0.0]], [2.0, 2.0], exact=True)
    with pytest.raises(ConfigError, match="M=5 but the ERSS state has 3 bank slots"):
        erss_step(
            st, torch.ones(2, 2), torch.ones(2), torch.ones(2), torch.ones(2, dtype=torch.bool), r=None, M=5, **KW
        )


def test_params_from_spec() -> None:
    p = erss_params(ERSSSpec(), exact=True)
    assert p == {"M": 32, "gamma": 1.0, "S": 40, "p": 0.2, "C": 32, "c_min": 0.5, "beta": 0.5, "exact": True}
    assert erss_params(ERSSSpec(injection="interpolate"), exact=True)["exact"] is False
    assert erss_params(ERSSSpec(), exact=False)["exact"] is False
    with pytest.raises(ConfigError, match='use injection="interpolate"'):
        erss_params(ERSSSpec(injection="exact"), exact=False)
