"""ALRR decision rule on hand-made norms: every branch of active/accept."""

from __future__ import annotations

import math

import torch

from l2reason.techniques import alrr

INF = math.inf


def _col(vals: list[float]) -> torch.Tensor:
    """[B, 1] states whose norms are |vals|."""
    return torch.tensor(vals, dtype=torch.float32)[:, None]


def test_active_band() -> None:
    n0 = torch.tensor([3.0, 4.0, 4.5, 5.9, 6.0, 7.0, 5.0, 5.0])
    tau = torch.tensor([4.0, 4.0, 4.0, 4.0, 4.0, 4.0, INF, 4.0])
    valid = torch.tensor([True] * 7 + [False])
    # τ < n⁰ < b·τ with b = 1.5 ⇒ (4, 6); τ = inf ⇒ inactive; invalid ⇒ inactive
    assert alrr.alrr_active(n0, tau, 1.5).tolist() == [False, False, True, True, False, False, False, True]
    assert alrr.alrr_active(n0, tau, 1.5, valid).tolist() == [False, False, True, True, False, False, False, False]


def test_accept_each_branch() -> None:
    # τ = 4, b = 1.5 (band (4, 6)), g = 0.2; ‖xᵏ‖ = 4.5 ⇒ growth needs ‖x̃‖ ≥ 5.4
    x_k = _col([4.5] * 6)
    n_k = torch.full((6,), 4.5)
    x_t = _col([5.5, 3.9, 5.0, 6.0, 5.5, float("nan")])
    tau = torch.full((6,), 4.0)
    active = torch.tensor([True, True, True, True, False, True])
    s = alrr.alrr_accept(x_k, n_k, x_t, tau, active, g=0.2, b=1.5)
    # 5.5 ok | ≤ τ | growth 0.11 < g | ≥ b·τ | inactive | NaN
    assert s.accepted.tolist() == [True, False, False, False, False, False]
    assert s.still_active.tolist() == s.accepted.tolist()
    assert s.x_next[:, 0].tolist() == [5.5, 4.5, 4.5, 4.5, 4.5, 4.5]
    assert s.n_next.tolist() == [5.5, 4.5, 4.5, 4.5, 4.5, 4.5]


def test_accept_growth_boundary_is_inclusive() -> None:
    # (‖x̃‖ − ‖xᵏ‖)/‖xᵏ‖ = g exactly is accepted (≥ g)
    s = alrr.alrr_accept(
        _col([5.0]), torch.tensor([5.0]), _col([6.0]), torch.tensor([4.0]), torch.tensor([True]), g=0.2, b=2.0
    )
    assert s.accepted.tolist() == [True]


def test_static_accept_keeps_every_active_row() -> None:
    x_k, x_t = _col([1.0, 2.0]), _col([9.0, -3.0])
    s = alrr.alrr_static_accept(x_k, torch.tensor([1.0, 2.0]), x_t, torch.tensor([True, False]))
    assert s.x_next[:, 0].tolist() == [9.0, 2.0]
    assert s.n_next.tolist() == [9.0, 2.0]
    assert s.accepted.tolist() == [True, False]


def test_run_loops_and_stops() -> None:
    x0 = _col([4.5, 4.5, 3.0])
    tau = torch.tensor([4.0, 4.0, 4.0])
    valid = torch.tensor([True, False, True])

    def rerun(x: torch.Tensor) -> torch.Tensor:
        return 1.25 * x

    # row 0: 4.5 → 5.625 → 7.03125 (both kept, < 8) → 8.789 (≥ b·τ = 8: rejected)
    out = alrr.alrr_run(x0, tau, valid, rerun, K=3, g=0.2, b=2.0)
    assert out.x[:, 0].tolist() == [7.03125, 4.5, 3.0]
    assert out.tried.tolist() == [3, 0, 0]
    assert out.accepted.tolist() == [2, 0, 0]
    # K = 0: nothing runs, x⁰ comes back as is
    out0 = alrr.alrr_run(x0, tau, valid, rerun, K=0, g=0.2, b=2.0)
    assert out0.x is x0 and out0.tried.tolist() == [0, 0, 0]
    # static: every valid row takes exactly K passes
    st = alrr.alrr_run(x0, tau, valid, rerun, K=2, g=0.2, b=2.0, static=True)
    assert st.x[:, 0].tolist() == [4.5 * 1.5625, 4.5, 3.0 * 1.5625]
    assert st.accepted.tolist() == [2, 0, 2]


def test_counters() -> None:
    c = alrr.alrr_counters_init(2, 3)
    c = alrr.alrr_counters_add(c, 1, torch.tensor([True, True]), torch.tensor([True, False]))
    c = alrr.alrr_counters_add(c, 2, torch.tensor([3, 0]), torch.tensor([2, 0]))
    c = alrr.alrr_counters_add(c, 1, torch.tensor([True, False]), torch.tensor([False, False]))
    assert c.tried.tolist() == [[0, 2, 3], [0, 1, 0]]
    assert c.accepted.tolist() == [[0, 1, 2], [0, 0, 0]]
