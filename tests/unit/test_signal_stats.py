"""abcd_stats and normalized_scores on hand-computed examples."""

from __future__ import annotations

import torch

from l2reason.signal import abcd_stats, normalized_scores


def _example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # batch 2, T = 6, two layers with τ = [2, 10].
    layer0 = torch.tensor([[1.0, 3.0, 2.0, 5.0, 4.0, 9.0], [4.0, 1.0, 3.0, 99.0, 99.0, 99.0]])
    layer1 = 10.0 * layer0
    norms = torch.stack([layer0, layer1], dim=-1)  # [2, 6, 2]
    tau = torch.tensor([2.0, 10.0])
    valid = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    return norms, tau, valid


def test_abcd_hand_computed_with_padding_and_tail() -> None:
    norms, tau, valid = _example()
    s = abcd_stats(norms, tau, valid, tail_frac=0.5)
    # Row 0, layer 0: n = 1,3,2,5,4,9; τ = 2 -> excess 0,1,0,3,2,7.
    #   A = 24, B = 13, C = 4 (3,5,4,9 > 2; 2 is not > 2).
    #   T = 6, T_tail = floor(0.5*6) = 3 -> tail = ranks >= ceil(0.5*6) = 3: 5,4,9 -> D = 12.
    # Row 1 layer 0 (3 valid: 4,1,3; padding 99 ignored): A = 8, B = 2+0+1 = 3, C = 2,
    #   T = 3, T_tail = floor(1.5) = 1 -> tail = rank 2 (n=3) -> D = 1.
    # Layer 1 = 10x norms with τ = 10: A, B, D scale x10 (excess over 10 of 10n is 10x
    #   excess over 1 of n) -> row 0: B = sum(max(0, 10n-10)) = 10*(0+2+1+4+3+8) = 180.
    assert s.A.tolist() == [[24.0, 240.0], [8.0, 80.0]]
    assert s.B.tolist() == [[13.0, 180.0], [3.0, 50.0]]
    assert s.C.tolist() == [[4.0, 5.0], [2.0, 2.0]]
    assert s.D.tolist() == [[12.0, 150.0], [1.0, 20.0]]
    assert s.T.tolist() == [[6.0, 6.0], [3.0, 3.0]]
    assert s.T_tail.tolist() == [[3.0, 3.0], [1.0, 1.0]]


def test_abcd_tail_convention_float_guard() -> None:
    # 0.3 * 10 must give a 3-step tail (float rounding would make ceil(0.7*10) = 8).
    n = torch.arange(1.0, 11.0).reshape(10, 1)
    s = abcd_stats(n, torch.tensor([0.0]), tail_frac=0.3)
    assert s.T_tail.item() == 3.0
    assert s.D.item() == 8.0 + 9.0 + 10.0


def test_abcd_tail_follows_valid_order_with_holes() -> None:
    # Invalid steps in the middle (e.g. massive activations) are skipped when ranking.
    n = torch.tensor([1.0, 100.0, 2.0, 3.0, 100.0, 4.0]).reshape(6, 1)
    valid = torch.tensor([True, False, True, True, False, True])
    s = abcd_stats(n, torch.tensor([0.0]), valid, tail_frac=0.5)
    assert s.T.item() == 4.0 and s.T_tail.item() == 2.0
    assert s.D.item() == 3.0 + 4.0


def test_abcd_per_layer_valid_and_batch_tau() -> None:
    n = torch.tensor([[1.0, 5.0], [3.0, 7.0]])  # [T=2, layers=2]
    valid = torch.tensor([[True, False], [True, True]])
    s = abcd_stats(n, torch.tensor([2.0, 6.0]), valid, tail_frac=1.0)
    assert s.A.tolist() == [4.0, 7.0]
    assert s.B.tolist() == [1.0, 1.0]
    assert s.T.tolist() == [2.0, 1.0]
    tau_b = torch.tensor([[2.0, 6.0], [0.0, 0.0]])  # [*batch=2, layers]
    s2 = abcd_stats(torch.stack([n, n]), tau_b, tail_frac=1.0)
    assert s2.B.tolist() == [[1.0, 1.0], [4.0, 12.0]]


def test_abcd_zero_valid_tokens_and_inf_tau() -> None:
    n = torch.full((2, 4, 3), float("nan"))
    s = abcd_stats(n, torch.ones(3), torch.zeros(2, 4, dtype=torch.bool))
    for f in s:
        assert f.shape == (2, 3)
        assert torch.equal(f, torch.zeros(2, 3))
    scores = normalized_scores(s)
    assert all(torch.equal(v, torch.zeros(2)) for v in scores.values())
    s_inf = abcd_stats(torch.ones(4, 1), torch.tensor([float("inf")]))
    assert (s_inf.B.item(), s_inf.C.item(), s_inf.D.item()) == (0.0, 0.0, 0.0)


def test_normalized_scores_values() -> None:
    norms, tau, valid = _example()
    sc = normalized_scores(abcd_stats(norms, tau, valid, tail_frac=0.5))
    assert set(sc) == {"A/T", "B/T", "C/T", "D/T"}
    exp = {
        "A/T": [(24 / 6 + 240 / 6) / 2, (8 / 3 + 80 / 3) / 2],
        "B/T": [(13 / 6 + 180 / 6) / 2, (3 / 3 + 50 / 3) / 2],
        "C/T": [(4 / 6 + 5 / 6) / 2, (2 / 3 + 2 / 3) / 2],
        "D/T": [(12 / 3 + 150 / 3) / 2, (1 / 1 + 20 / 1) / 2],
    }
    for k, v in exp.items():
        assert sc[k].shape == (2,)
        torch.testing.assert_close(sc[k], torch.tensor(v))
