"""Static steering identities and the suppression causal check."""

from __future__ import annotations

import math

import pytest
import torch

from l2reason.errors import ConfigError
from l2reason.techniques.static_steer import static_steer, steering_vector_from_norms
from l2reason.techniques.suppress import suppress_step

INF = math.inf


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm_preserving", [False, True])
def test_steer_identities(dtype: torch.dtype, norm_preserving: bool) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 37, generator=g).to(dtype)
    v = torch.randn(37, generator=g)
    ok = torch.ones(5, dtype=torch.bool)
    assert torch.equal(static_steer(x, v, 0.0, ok, norm_preserving), x)  # α = 0
    assert torch.equal(static_steer(x, v - v, 3.0, ok, norm_preserving), x)  # v − v


def test_steer_values_and_validity() -> None:
    x = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    v = torch.tensor([1.0, 0.0])
    out = static_steer(x, v, 2.0, torch.tensor([True, False]))
    assert out.tolist() == [[5.0, 4.0], [1.0, 1.0]]
    kept = static_steer(x, torch.tensor([5.0, 0.0]), 1.0, torch.tensor([True, True]), norm_preserving=True)
    assert kept.norm(dim=-1).tolist() == pytest.approx([5.0, math.sqrt(2.0)])
    assert kept[0].tolist() == pytest.approx([8.0 * 5 / math.sqrt(80), 4.0 * 5 / math.sqrt(80)])


def test_norm_preserving_keeps_norms() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 64, generator=g) * 3
    out = static_steer(x, torch.randn(64, generator=g), 4.0, torch.ones(8, dtype=torch.bool), True)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    assert not torch.allclose(out, x)


def test_steering_vector_from_norms() -> None:
    s = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [5.0, 2.0]])
    v = steering_vector_from_norms(s, s.norm(dim=-1), 2.0)
    assert v.tolist() == pytest.approx([4.0 - 0.5, 1.0 - 0.5])
    with pytest.raises(ConfigError, match="no state has a norm above tau=10"):
        steering_vector_from_norms(s, s.norm(dim=-1), 10.0)
    with pytest.raises(ConfigError, match="no state has a norm at or below tau=0"):
        steering_vector_from_norms(s, s.norm(dim=-1), 0.0)


def _supp(x, tau, valid=None, **kw):
    B = x.shape[0]
    args = dict(target="high_norm", action="scale", scale=0.1, rate=0.05)
    args.update(kw)
    v = torch.ones(B, dtype=torch.bool) if valid is None else valid
    zeros = torch.zeros(B, dtype=torch.int64)
    return suppress_step(x, x.norm(dim=-1), tau, v, seed=args.pop("seed", zeros), step=args.pop("step", zeros), **args)


def test_high_norm_scale_and_clamp() -> None:
    x = torch.tensor([[6.0, 8.0], [0.6, 0.8], [6.0, 8.0], [6.0, 8.0]])  # norms 10, 1, 10, 10
    tau = torch.tensor([8.0, 8.0, INF, 8.0])
    valid = torch.tensor([True, True, True, False])
    out, hit = _supp(x, tau, valid)
    assert hit.tolist() == [True, False, False, False]
    expected = torch.tensor([[0.6, 0.8], [0.6, 0.8], [6.0, 8.0], [6.0, 8.0]])
    torch.testing.assert_close(out, expected)
    out, hit = _supp(x, tau, valid, action="clamp")
    assert out.norm(dim=-1).tolist() == pytest.approx([2.0, 1.0, 10.0, 10.0])  # τ/4 = 2
    assert out[0].tolist() == pytest.approx([1.2, 1.6])


def test_clamp_never_grows_a_state() -> None:
    x = torch.tensor([[0.3, 0.4]])  # norm 0.5 < τ/4 = 2
    out, _ = _supp(x, torch.tensor([8.0]), target="random", rate=1.0, action="clamp")
    assert torch.equal(out, x)


def test_random_target_rate_and_norm_independence() -> None:
    B, T = 500, 200
    seed = torch.arange(B, dtype=torch.int64) * 31 + 5
    g = torch.Generator().manual_seed(3)
    total = 0
    for t in range(T):
        step = torch.full((B,), t, dtype=torch.int64)
        x = torch.randn(B, 8, generator=g)
        out, hit = _supp(x, torch.full((B,), 1.0), target="random", rate=0.05, seed=seed, step=step)
        _, hit2 = _supp(x * 100, torch.full((B,), 1.0), target="random", rate=0.05, seed=seed, step=step)
        assert torch.equal(hit, hit2)  # independent of the norm
        torch.testing.assert_close(out[hit], x[hit] * 0.1)
        assert torch.equal(out[~hit], x[~hit])
        total += int(hit.sum())
    assert abs(total / (B * T) - 0.05) < 0.004


def test_bad_target_or_action() -> None:
    x = torch.ones(1, 2)
    with pytest.raises(ConfigError, match='target must be "high_norm" or "random"'):
        _supp(x, torch.ones(1), target="big")
    with pytest.raises(ConfigError, match='action must be "scale" or "clamp"'):
        _supp(x, torch.ones(1), action="zero")
