"""The adaptive threshold τ = Q3 + k·max(IQR, min_iqr): online and offline."""

from __future__ import annotations

import torch

from l2reason.signal import iqr_threshold, p2_value, tau_init, tau_update, tau_value


def test_tau_inf_during_warmup_then_fence_of_p2_values() -> None:
    g = torch.Generator().manual_seed(11)
    W = 32
    n = 50.0 + 5.0 * torch.randn(2, 3, 80, generator=g)  # [slots, layers, steps]
    valid = torch.ones(2, 3, dtype=torch.bool)
    st = tau_init((2, 3))
    for t in range(80):
        tau = tau_value(st, warmup=W)
        if t < W:
            assert torch.isinf(tau).all() and (tau > 0).all()
        else:
            Q1 = p2_value(st.q1, 0.25)
            Q3 = p2_value(st.q3, 0.75)
            assert torch.isfinite(tau).all()
            torch.testing.assert_close(tau, Q3 + 1.5 * (Q3 - Q1))
        st = tau_update(st, n[..., t], valid)
    # After 80 samples the online fence is close to the exact one.
    exact = iqr_threshold(n)
    torch.testing.assert_close(tau_value(st, warmup=W), exact, rtol=0.03, atol=0.0)


def test_tau_per_row_warmup_and_masked_rows() -> None:
    st = tau_init((2,))
    valid = torch.tensor([True, False])
    for v in (1.0, 2.0, 3.0, 4.0):
        st = tau_update(st, torch.tensor([v, v]), valid)
    tau = tau_value(st, warmup=4)
    assert tau[0].item() == 3.25 + 1.5 * 1.5  # exact quartiles of 1..4 (torch.quantile)
    assert torch.isinf(tau[1])
    assert torch.isinf(tau_value(st, warmup=5)).all()
    assert tau_value(st, warmup=0)[0].item() == tau[0].item()  # warmup < 1 acts as 1


def test_min_iqr_floor_on_flat_signal() -> None:
    st = tau_init((1,))
    for _ in range(40):
        st = tau_update(st, torch.tensor([7.0]), torch.tensor([True]))
    torch.testing.assert_close(tau_value(st, warmup=32, k=2.0, min_iqr=0.01), torch.tensor([7.02]))


def test_iqr_threshold_offline() -> None:
    n = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 1000.0], [3.0, 3.0, 3.0, 3.0, 3.0, 3.0]])
    valid = torch.tensor([[True] * 5 + [False], [True] * 6])
    tau = iqr_threshold(n, valid)
    torch.testing.assert_close(tau, torch.tensor([4.0 + 1.5 * 2.0, 3.0 + 1.5e-3]))
    assert torch.isinf(iqr_threshold(n, torch.zeros_like(valid))).all()
    # Without a mask: torch.quantile over all T.
    q1, q3 = torch.quantile(n[0], torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(iqr_threshold(n[0]), q3 + 1.5 * (q3 - q1))


def test_tau_step_compiles_fullgraph() -> None:
    torch._dynamo.reset()

    def step(st, n, valid):  # type: ignore[no-untyped-def]
        st = tau_update(st, n, valid)
        return st, tau_value(st, warmup=3)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    st_c = st_e = tau_init((4,))
    g = torch.Generator().manual_seed(2)
    for _ in range(8):
        n = torch.rand(4, generator=g)
        v = torch.rand(4, generator=g) > 0.3
        st_c, tau_c = compiled(st_c, n, v)
        st_e, tau_e = step(st_e, n, v)
        torch.testing.assert_close(tau_c, tau_e, rtol=0, atol=0)
