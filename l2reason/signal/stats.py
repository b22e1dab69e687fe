"""Sequence-level norm statistics A, B, C, D (used by response selection).

For one generated sequence and one layer ``l`` with threshold ``τ_l``, over
the valid decode tokens ``t`` (prompt, padding and massive-activation tokens
excluded by the caller's ``valid`` mask):

- ``A = Σ_t n_t``                    (total norm mass)
- ``B = Σ_t max(0, n_t − τ)``        (excess above threshold)
- ``C = Σ_t 1[n_t > τ]``             (number of spikes)
- ``D = B`` restricted to the tail: the last ``tail_frac`` of valid steps.

Tail convention: with ``T_valid`` valid steps numbered ``r = 0..T_valid-1``
in order, the tail is ``r ≥ ceil((1 − tail_frac)·T_valid)``, so it holds
``T_tail = T_valid − ceil((1 − tail_frac)·T_valid) = floor(tail_frac·T_valid)``
steps (computed in float64 with a 1e-9 guard so ``0.3·10`` gives 3, not 2).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from l2reason.errors import ConfigError

__all__ = ["ABCDStats", "abcd_stats", "normalized_scores"]


class ABCDStats(NamedTuple):
    """Raw per-layer statistics; every field is ``[*batch, n_layers]``.

    ``T`` (valid tokens) and ``T_tail`` (tail tokens) are counts stored as float.
    """

    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor
    T: Tensor
    T_tail: Tensor


def abcd_stats(
    norms: Tensor,
    tau: Tensor,
    valid: Tensor | None = None,
    tail_frac: float = 0.3,
) -> ABCDStats:
    """Compute A, B, C, D over the valid decode tokens, per layer.

    Args:
        norms: ``[*batch, T, n_layers]`` token norms ``n_{l,t}``.
        tau: ``[n_layers]`` per-layer thresholds ``τ_l`` (or
            ``[*batch, n_layers]``); ``+inf`` gives ``B = C = D = 0``.
        valid: ``[*batch, T]`` or ``[*batch, T, n_layers]`` bool, True for
            tokens that count; ``None`` = all valid. Invalid positions may
            hold anything (even NaN); they never enter a sum.
        tail_frac: fraction of the valid steps that form the tail for ``D``,
            in ``[0, 1]`` (see the module docstring for the exact convention).

    Returns:
        :class:`ABCDStats`, each field ``[*batch, n_layers]`` in float32 (float64
        if ``norms`` is float64). Rows with no valid token give all zeros.

    Example:
        >>> n = torch.tensor([[1.0], [3.0], [5.0]])          # T=3, one layer
        >>> s = abcd_stats(n, torch.tensor([2.0]), tail_frac=0.34)
        >>> [float(v) for v in (s.A, s.B, s.C, s.D, s.T, s.T_tail)]
        [9.0, 4.0, 2.0, 3.0, 3.0, 1.0]
    """
    if not 0.0 <= tail_frac <= 1.0:
        raise ConfigError(f"tail_frac must be in [0, 1], got {tail_frac}; the default is 0.3.")
    if norms.dim() < 2:
        raise ConfigError(
            f"norms must be [*batch, T, n_layers], got shape {tuple(norms.shape)}; "
            "add a layer dim with norms.unsqueeze(-1)."
        )
    dtype = torch.promote_types(norms.dtype, torch.float32)
    n = norms.to(dtype)  # [*batch, T, Ln]
    if valid is None:
        v = torch.ones_like(n, dtype=torch.bool)
    elif valid.dim() == n.dim() - 1:
        v = valid.unsqueeze(-1).expand_as(n)  # [*batch, T] -> [*batch, T, Ln]
    else:
        v = valid.expand_as(n)
    t = tau.to(device=n.device, dtype=dtype)
    if t.dim() > 1:
        t = t.unsqueeze(-2)  # [*batch, Ln] -> [*batch, 1, Ln]

    zero = torch.zeros_like(n)
    vf = v.to(dtype)
    excess = torch.clamp(n - t, min=0.0)  # max(0, n_t − τ)
    A = torch.where(v, n, zero).sum(-2)
    B = torch.where(v, excess, zero).sum(-2)
    C = torch.where(v & (n > t), torch.ones_like(n), zero).sum(-2)
    T = vf.sum(-2)  # [*batch, Ln]

    # Tail: valid rank r >= ceil((1 − f)·T_valid)  <=>  r >= T_valid − floor(f·T_valid).
    T_tail = torch.floor(T.to(torch.float64) * tail_frac + 1e-9).to(dtype)
    rank = torch.cumsum(vf, dim=-2) - 1.0  # 0-based rank among valid steps
    in_tail = v & (rank >= (T - T_tail).unsqueeze(-2))
    D = torch.where(in_tail, excess, zero).sum(-2)
    return ABCDStats(A=A, B=B, C=C, D=D, T=T, T_tail=T_tail)


def normalized_scores(stats: ABCDStats) -> dict[str, Tensor]:
    """Length-normalised scores, averaged over layers.

    ``A/T``, ``B/T``, ``C/T`` divide by ``T``; ``D/T`` divides ``D`` by
    ``T_tail``. Each ratio is 0 where its denominator is 0, then the plain
    mean over the layer dim is taken.

    Args:
        stats: :class:`ABCDStats` with fields ``[*batch, n_layers]``.

    Returns:
        ``{"A/T", "B/T", "C/T", "D/T"}`` -> ``[*batch]`` tensors.

    Example:
        >>> s = abcd_stats(torch.tensor([[1.0], [3.0], [5.0]]), torch.tensor([2.0]))
        >>> float(normalized_scores(s)["B/T"])
        1.3333333730697632
    """

    def ratio(num: Tensor, den: Tensor) -> Tensor:
        safe = torch.where(den > 0, den, torch.ones_like(den))
        return torch.where(den > 0, num / safe, torch.zeros_like(num)).mean(-1)

    return {
        "A/T": ratio(stats.A, stats.T),
        "B/T": ratio(stats.B, stats.T),
        "C/T": ratio(stats.C, stats.T),
        "D/T": ratio(stats.D, stats.T_tail),
    }
