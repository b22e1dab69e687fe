"""token_norms and massive_activation_mask."""

from __future__ import annotations

import torch

from l2reason.signal import MASSIVE_FACTOR, massive_activation_mask, token_norms


def test_token_norms_matches_vector_norm_and_is_float32() -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 7, 37, generator=g)
    n = token_norms(h)
    assert n.shape == (3, 7)
    assert n.dtype == torch.float32
    torch.testing.assert_close(n, torch.linalg.vector_norm(h, dim=-1))


def test_token_norms_fp16_upcast_avoids_overflow() -> None:
    # Squaring in fp16 would overflow: 300^2 * 4 = 360000 > 65504 (fp16 max).
    h = torch.full((2, 4), 300.0, dtype=torch.float16)
    n = token_norms(h)
    assert n.dtype == torch.float32
    torch.testing.assert_close(n, torch.tensor([600.0, 600.0]))


def test_massive_mask_flags_planted_token_not_padding() -> None:
    g = torch.Generator().manual_seed(1)
    norms = 1.0 + 0.1 * torch.rand(2, 3, 16, generator=g)  # [B, layers, T]
    norms[0, 1, 0] = 100.0 * norms[0, 1].median()  # planted BOS-like spike
    valid = torch.ones(2, 3, 16, dtype=torch.bool)
    valid[1, :, 12:] = False
    norms[1, :, 12:] = 1e6  # huge padding values must not be flagged
    mask = massive_activation_mask(norms, valid)
    assert mask.dtype == torch.bool and mask.shape == norms.shape
    expected = torch.zeros_like(mask)
    expected[0, 1, 0] = True
    assert torch.equal(mask, expected)


def test_massive_mask_median_over_valid_only_and_empty_rows() -> None:
    # The median uses valid tokens only: padding of 0 would otherwise drag it down.
    norms = torch.tensor([[10.0, 10.0, 150.0, 0.0, 0.0, 0.0, 0.0], [5.0] * 7])
    valid = torch.tensor([[True] * 3 + [False] * 4, [False] * 7])
    mask = massive_activation_mask(norms, valid)
    assert not mask.any()  # 150 < 20 x 10; a row without valid tokens flags nothing
    mask = massive_activation_mask(norms, valid, factor=10.0)
    assert mask.tolist() == [[False, False, True] + [False] * 4, [False] * 7]
    assert MASSIVE_FACTOR == 20.0
