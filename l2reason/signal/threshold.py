"""The adaptive per-layer threshold ``τ_l = Q3 + k·max(IQR, min_iqr)``.

Tukey's outer fence (k = 1.5, Tukey 1977) over the norms a request has
produced so far (``docs/techniques.md``, "Thresholds τ": the *adaptive* mode,
default for interventions). Online, Q1 and Q3 come from two P² estimators
(:mod:`l2reason.signal.p2`) per row, so the step is a fixed-shape tensor
function that survives ``torch.compile(fullgraph=True)`` and CUDA-graph
capture. Before ``warmup`` samples the threshold is ``+inf``: nothing can
exceed it, so no intervention fires during warm-up. ``min_iqr`` (1e-3, as in
the paper) keeps the fence above Q3 when the norms are (nearly) constant.
:func:`iqr_threshold` is the exact offline counterpart.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from l2reason.signal.p2 import P2State, p2_init, p2_update, p2_value

__all__ = ["TauState", "iqr_threshold", "tau_init", "tau_update", "tau_value"]

_P1, _P3 = 0.25, 0.75  # quartiles tracked by the two P² estimators


class TauState(NamedTuple):
    """Streaming quartile estimators for a batch of rows (e.g. slots x layers).

    Attributes:
        q1: P² state tracking the 0.25-quantile, batch shape ``*B``.
        q3: P² state tracking the 0.75-quantile, batch shape ``*B``.
    """

    q1: P2State
    q3: P2State


def tau_init(
    batch_shape: tuple[int, ...],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> TauState:
    """Fresh, empty threshold estimators.

    Args:
        batch_shape: ``*B``, e.g. ``(num_slots, n_layers)``.
        dtype: float dtype of the P² markers.
        device: where the state lives.

    Returns:
        :class:`TauState` with zero samples seen.

    Example:
        >>> st = tau_init((2, 3))
        >>> tau_value(st, warmup=1).isinf().all().item()
        True
    """
    return TauState(
        q1=p2_init(batch_shape, _P1, dtype=dtype, device=device),
        q3=p2_init(batch_shape, _P3, dtype=dtype, device=device),
    )


def tau_update(state: TauState, n: Tensor, valid: Tensor) -> TauState:
    """Feed one norm per row to both quartile estimators.

    Args:
        state: current :class:`TauState` (batch shape ``*B``).
        n: ``[*B]`` norms ``n_{l,t}`` of the current decode step.
        valid: ``[*B]`` bool; rows with False (idle slots, prompt tokens,
            massive activations) are left unchanged.

    Returns:
        The new :class:`TauState`.

    Example:
        >>> st = tau_init((1,))
        >>> st = tau_update(st, torch.tensor([2.0]), torch.tensor([True]))
        >>> int(st.q3.count)
        1
    """
    return TauState(
        q1=p2_update(state.q1, n, valid, _P1),
        q3=p2_update(state.q3, n, valid, _P3),
    )


def tau_value(state: TauState, warmup: int, k: float = 1.5, min_iqr: float = 1e-3) -> Tensor:
    """The current threshold ``τ = Q3 + k·max(Q3 − Q1, min_iqr)`` per row.

    Args:
        state: :class:`TauState` with batch shape ``*B``.
        warmup: ``W``, samples needed before ``τ`` is finite; values below 1
            are treated as 1 (a threshold needs at least one sample).
        k: fence multiplier (Tukey's 1.5).
        min_iqr: floor on the IQR (keeps ``τ > Q3`` on flat signals).

    Returns:
        ``[*B]`` thresholds; ``+inf`` where fewer than ``max(warmup, 1)``
        samples were seen.

    Example:
        >>> st = tau_init((1,))
        >>> for v in [1.0, 2.0, 3.0, 4.0]:
        ...     st = tau_update(st, torch.tensor([v]), torch.tensor([True]))
        >>> tau_value(st, warmup=4).tolist()   # exact Q1=1.75, Q3=3.25
        [5.5]
        >>> tau_value(st, warmup=32).tolist()  # still warming up
        [inf]

    Note:
        With fewer than 5 samples the quartiles are exact; from 5 on they are
        the P² middle markers, which start at the sample median (so at exactly
        5 samples ``Q1 = Q3``) and reach their targets within a few dozen
        samples. Keep ``warmup`` at its default (32) or above.
    """
    Q1 = p2_value(state.q1, _P1)
    Q3 = p2_value(state.q3, _P3)
    iqr = torch.clamp(Q3 - Q1, min=min_iqr)
    tau = Q3 + k * iqr
    ready = state.q3.count >= max(int(warmup), 1)
    return torch.where(ready, tau, torch.full_like(tau, float("inf")))


def iqr_threshold(norms: Tensor, valid: Tensor | None = None, k: float = 1.5, min_iqr: float = 1e-3) -> Tensor:
    """Exact offline ``τ = Q3 + k·max(IQR, min_iqr)`` over the last dim.

    Quartiles use linear interpolation (``torch.quantile``) over the valid
    tokens of each row.

    Args:
        norms: ``[*B, T]`` token norms.
        valid: ``[*B, T]`` bool, tokens that count; ``None`` = all valid.
        k: fence multiplier (Tukey's 1.5).
        min_iqr: floor on the IQR.

    Returns:
        ``[*B]`` thresholds; ``+inf`` for rows with no valid token.

    Example:
        >>> iqr_threshold(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])).item()
        7.0
    """
    n = norms.to(torch.promote_types(norms.dtype, torch.float32))
    if valid is not None:
        n = torch.where(valid, n, torch.full_like(n, float("nan")))
    qs = torch.tensor([_P1, _P3], dtype=n.dtype, device=n.device)
    Q1, Q3 = torch.nanquantile(n, qs, dim=-1)  # each [*B]; NaN if no valid token
    tau = Q3 + k * torch.clamp(Q3 - Q1, min=min_iqr)
    return torch.where(torch.isnan(tau), torch.full_like(tau, float("inf")), tau)
