"""The P² streaming quantile estimator, vectorised and capture-safe.

Jain & Chlamtac, "The P² algorithm for dynamic calculation of quantiles and
histograms without storing observations", CACM 28(10), 1985. Five markers
track the min, the p/2-, p-, (1+p)/2-quantiles and the max; each new sample
moves marker positions by one and the middle three markers are nudged toward
their desired positions with a piecewise-parabolic (P²) formula, falling back
to linear interpolation when the parabola would break monotonicity.

Differences from the paper's pseudo-code:

- It runs over an arbitrary batch shape ``*B`` (one estimator per row, e.g.
  per request slot and layer) as fixed-shape tensor code with no
  data-dependent Python control flow: every branch is computed for every row
  and chosen with ``torch.where``. ``p2_update`` compiles with
  ``torch.compile(fullgraph=True)`` and allocates nothing on the host, so it
  can be captured in a CUDA graph (``docs/techniques.md``, "Step functions and
  randomness").
- Desired positions are recomputed as ``1 + (n − 1)·dn'`` from the sample count
  instead of being accumulated step by step, which avoids float32 drift on
  long streams (identical in exact arithmetic).
- Markers use 1-based positions as in the paper (``pos = 1..5`` after 5 samples).
- A sample that is not finite is treated as invalid (skipped).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from l2reason.errors import ConfigError

__all__ = ["P2State", "p2_init", "p2_update", "p2_value"]

_M = 5  # number of P² markers


class P2State(NamedTuple):
    """State of a batch of P² estimators (all fields share the batch shape ``*B``).

    Attributes:
        q: ``[*B, 5]`` marker heights. While ``count < 5`` the first ``count``
            entries hold the samples seen so far, sorted; the rest are 0.
        pos: ``[*B, 5]`` actual marker positions ``n_i`` (float, 1-based).
        desired: ``[*B, 5]`` desired marker positions ``n'_i``.
        count: ``[*B]`` int64, number of samples seen.
    """

    q: Tensor
    pos: Tensor
    desired: Tensor
    count: Tensor  # type: ignore[assignment]  # shadows tuple.count; name fixed by the API


def _check_p(p: float) -> None:
    if not 0.0 < p < 1.0:
        raise ConfigError(f"P² quantile p must be in (0, 1), got {p}.")


def _dn(p: float, j: Tensor) -> Tensor:
    """Desired-position increments ``dn' = [0, p/2, p, (1+p)/2, 1]`` for ``j = 0..4``.

    Args:
        p: the tracked quantile.
        j: ``[5]`` float marker indices ``0..4``.

    Built with ``torch.where`` on Python constants (no host-to-device copy, so
    CUDA-graph safe), each value rounded exactly as the paper's expressions.
    """
    out = torch.zeros_like(j)
    for i, v in enumerate((0.0, p / 2, p, (1 + p) / 2, 1.0)):
        out = torch.where(j == i, v, out)
    return out


def p2_init(
    batch_shape: tuple[int, ...],
    p: float,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> P2State:
    """A fresh (empty) batch of P² estimators for the ``p``-quantile.

    Args:
        batch_shape: ``*B``, e.g. ``(num_slots, n_layers)``.
        p: the quantile to track, in (0, 1).
        dtype: float dtype of ``q``, ``pos`` and ``desired``.
        device: where the state lives.

    Returns:
        :class:`P2State` with ``count = 0``.

    Example:
        >>> s = p2_init((2,), 0.5)
        >>> s.q.shape, s.count.tolist()
        (torch.Size([2, 5]), [0, 0])
    """
    _check_p(p)
    shape = (*batch_shape, _M)
    j = torch.arange(_M, dtype=dtype, device=device)
    return P2State(
        q=torch.zeros(shape, dtype=dtype, device=device),
        pos=(j + 1).expand(shape).clone(),
        desired=(1 + 4 * _dn(p, j)).expand(shape).clone(),  # [1, 1+2p, 1+4p, 3+2p, 5]
        count=torch.zeros(batch_shape, dtype=torch.int64, device=device),
    )


def p2_update(state: P2State, x: Tensor, valid: Tensor, p: float) -> P2State:
    """Feed one sample per row; rows with ``valid=False`` are left unchanged.

    The first 5 samples of a row are stored sorted in ``q``; from the 6th on
    the standard P² marker update runs. Pure tensor code with fixed shapes.

    Args:
        state: current :class:`P2State` (batch shape ``*B``).
        x: ``[*B]`` new samples (cast to the state's dtype; non-finite samples
            count as invalid).
        valid: ``[*B]`` bool, which rows take their sample.
        p: the quantile the state was initialised for.

    Returns:
        The new :class:`P2State` (inputs are not modified).

    Example:
        >>> s = p2_init((1,), 0.5)
        >>> for v in [5.0, 1.0, 4.0, 2.0, 3.0, 6.0]:
        ...     s = p2_update(s, torch.tensor([v]), torch.tensor([True]), 0.5)
        >>> int(s.count), s.q[0].tolist()
        (6, [1.0, 2.0, 3.0, 4.0, 6.0])

    Long because: the fill phase, the P² marker update and the per-row choice between them are one
    fixed-shape tensor function that compiles with ``torch.compile(fullgraph=True)``, written to be read
    beside the paper's algorithm.
    """
    _check_p(p)
    q, pos, desired, count = state
    dtype = q.dtype
    x = x.to(dtype)
    valid = valid & torch.isfinite(x)  # [*B]
    j = torch.arange(_M, device=q.device)  # [5] marker index
    xe = x.unsqueeze(-1)  # [*B, 1]
    ce = count.unsqueeze(-1)  # [*B, 1]

    # --- fill phase (count < 5): insert x into the sorted first `count` slots.
    inf = torch.full_like(q, float("inf"))
    cand = torch.where(j < ce, q, inf)
    cand = torch.where(j == ce, xe.expand_as(q), cand)
    q_fill = torch.sort(cand, dim=-1).values
    q_fill = torch.where(j <= ce, q_fill, torch.zeros_like(q))

    # --- P² phase (count >= 5).
    # Find cell k with q_k <= x < q_{k+1}; markers above it move one position.
    # Marker 0 never moves, marker 4 always does (x >= q_4 makes x the new max).
    inc = torch.where(j == 0, False, torch.where(j == _M - 1, True, xe < q)).to(dtype)
    qa = torch.where(j == 0, torch.minimum(q, xe), torch.where(j == _M - 1, torch.maximum(q, xe), q))
    pa = pos + inc
    n_new = (count + 1).to(dtype).unsqueeze(-1)  # [*B, 1]
    d_new = 1 + (n_new - 1) * _dn(p, j.to(dtype))  # desired positions n'_i

    qs = list(qa.unbind(-1))  # heights q_i, each [*B]
    ns = list(pa.unbind(-1))  # positions n_i
    ds = d_new.unbind(-1)
    for i in (1, 2, 3):  # fixed marker loop, sequential as in the paper
        d = ds[i] - ns[i]
        up = (d >= 1) & (ns[i + 1] - ns[i] > 1)
        down = (d <= -1) & (ns[i - 1] - ns[i] < -1)
        move = up | down
        s = up.to(dtype) * 2 - 1  # sign(d) where moving
        # Piecewise-parabolic prediction (P² formula).
        qp = qs[i] + s / (ns[i + 1] - ns[i - 1]) * (
            (ns[i] - ns[i - 1] + s) * (qs[i + 1] - qs[i]) / (ns[i + 1] - ns[i])
            + (ns[i + 1] - ns[i] - s) * (qs[i] - qs[i - 1]) / (ns[i] - ns[i - 1])
        )
        parabolic_ok = (qs[i - 1] < qp) & (qp < qs[i + 1])
        # Linear fallback toward the neighbour in direction s.
        q_nb = torch.where(up, qs[i + 1], qs[i - 1])
        n_nb = torch.where(up, ns[i + 1], ns[i - 1])
        ql = qs[i] + s * (q_nb - qs[i]) / (n_nb - ns[i])
        qs[i] = torch.where(move, torch.where(parabolic_ok, qp, ql), qs[i])
        ns[i] = torch.where(move, ns[i] + s, ns[i])
    q_p2 = torch.stack(qs, dim=-1)
    pos_p2 = torch.stack(ns, dim=-1)

    # --- choose per row.
    fill = (valid & (count < _M)).unsqueeze(-1)
    step = (valid & (count >= _M)).unsqueeze(-1)
    return P2State(
        q=torch.where(fill, q_fill, torch.where(step, q_p2, q)),
        pos=torch.where(step, pos_p2, pos),
        desired=torch.where(step, d_new, desired),
        count=count + valid.to(count.dtype),
    )


def p2_value(state: P2State, p: float) -> Tensor:
    """Current estimate of the ``p``-quantile per row.

    Args:
        state: :class:`P2State` with batch shape ``*B``.
        p: the quantile the state tracks.

    Returns:
        ``[*B]``: the middle marker ``q_2`` once ``count >= 5``; for
        ``1 <= count < 5`` the exact quantile of the stored samples (linear
        interpolation, as ``torch.quantile``); NaN for ``count == 0``.

    Example:
        >>> s = p2_init((1,), 0.5)
        >>> for v in [1.0, 3.0]:
        ...     s = p2_update(s, torch.tensor([v]), torch.tensor([True]), 0.5)
        >>> p2_value(s, 0.5).tolist()
        [2.0]
    """
    _check_p(p)
    q, _, _, count = state
    h = p * (count.clamp(min=1) - 1).to(q.dtype)  # fractional rank among stored samples
    lo = torch.floor(h)
    lo_i = lo.to(torch.int64).clamp(0, _M - 1).unsqueeze(-1)
    hi_i = torch.ceil(h).to(torch.int64).clamp(0, _M - 1).unsqueeze(-1)
    q_lo = torch.gather(q, -1, lo_i).squeeze(-1)
    q_hi = torch.gather(q, -1, hi_i).squeeze(-1)
    exact = q_lo + (h - lo) * (q_hi - q_lo)
    nan = torch.full_like(exact, float("nan"))
    return torch.where(count >= _M, q[..., 2], torch.where(count >= 1, exact, nan))
