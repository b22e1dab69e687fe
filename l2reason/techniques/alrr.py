"""Adaptive Layer-wise Reasoning Recursion (ALRR), the decision rule.

``docs/techniques.md``, "ALRR": at layer l the normal pass gives x⁰ (it writes the KV
cache) and n⁰ = ‖x⁰‖. The token is *active* if τ < n⁰ < b·τ. While active and
k < K the caller re-runs the layer, x̃ = f_l(xᵏ), without writing the KV cache,
and the rule accepts x̃ only if ‖x̃‖ > τ, (‖x̃‖ − ‖xᵏ‖)/‖xᵏ‖ ≥ g and
‖x̃‖ < b·τ; otherwise x̃ is discarded and the row stops.

Everything here is a pure fixed-shape tensor function over rows (a row = one
request/candidate): the caller computes x̃ for *every* row, and the rule
chooses per row with ``torch.where``; so it runs inside a captured CUDA graph
and compiles with ``torch.compile(fullgraph=True)``. How to re-run a layer
without touching the KV cache is the backend's business.

Example:
    >>> import torch
    >>> x0 = torch.tensor([[3.0, 4.0]])                # n⁰ = 5
    >>> tau = torch.tensor([4.0])
    >>> out = alrr_run(x0, tau, torch.tensor([True]), lambda x: 1.25 * x, K=1, g=0.2, b=2.0)
    >>> out.n.tolist(), out.accepted.tolist()           # 6.25 ∈ (τ, b·τ) = (4, 8): kept
    ([6.25], [1])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from l2reason.signal.norms import token_norms

__all__ = [
    "ALRRCounters",
    "ALRRResult",
    "ALRRStep",
    "alrr_accept",
    "alrr_active",
    "alrr_counters_add",
    "alrr_counters_init",
    "alrr_run",
    "alrr_static_accept",
]


class ALRRStep(NamedTuple):
    """Outcome of one recursion pass for every row.

    Attributes:
        x_next: [B, d] x^{k+1} (x̃ where accepted, else xᵏ).
        n_next: [B] float32 ‖x^{k+1}‖.
        accepted: [B] bool, x̃ was kept.
        still_active: [B] bool, the row may try another pass.
    """

    x_next: Tensor
    n_next: Tensor
    accepted: Tensor
    still_active: Tensor


def alrr_active(n0: Tensor, tau: Tensor, b: float, valid: Tensor | None = None) -> Tensor:
    """Which rows recurse: τ < n⁰ < b·τ (and valid).

    τ = +inf (threshold warm-up) makes every row inactive.

    Args:
        n0: [B] ‖x⁰‖ after the normal pass.
        tau: [B] the row's threshold τ_l.
        b: upper band factor (> 1).
        valid: [B] bool, False for finished/padding rows; None = all valid.

    Returns:
        [B] bool.

    Example:
        >>> import torch
        >>> alrr_active(torch.tensor([3.0, 5.0, 7.0]), torch.full((3,), 4.0), 1.5).tolist()
        [False, True, False]
    """
    active = (n0 > tau) & (n0 < b * tau)
    return active if valid is None else active & valid


def alrr_accept(
    x_k: Tensor,
    n_k: Tensor,
    x_tilde: Tensor,
    tau: Tensor,
    active: Tensor,
    g: float,
    b: float,
) -> ALRRStep:
    """Apply the acceptance rule to one re-run pass.

    Accept x̃ iff the row is active, ‖x̃‖ > τ, ‖x̃‖ − ‖xᵏ‖ ≥ g·‖xᵏ‖ (the
    relative-growth test without a division; identical for ‖xᵏ‖ > 0, which
    holds for active rows since ‖xᵏ‖ > τ) and ‖x̃‖ < b·τ. A rejected row keeps
    xᵏ and stops (``still_active`` False). NaN norms are rejected.

    Args:
        x_k: [B, d] current state xᵏ.
        n_k: [B] ‖xᵏ‖ (float32).
        x_tilde: [B, d] x̃ = f_l(xᵏ), computed for every row by the caller.
        tau: [B] τ_l.
        active: [B] bool, rows still recursing.
        g: minimum relative growth.
        b: upper band factor.

    Returns:
        An :class:`ALRRStep`.

    Example:
        >>> import torch
        >>> s = alrr_accept(torch.tensor([[5.0]]), torch.tensor([5.0]), torch.tensor([[5.5]]),
        ...                 torch.tensor([4.0]), torch.tensor([True]), g=0.2, b=1.5)
        >>> s.accepted.tolist()                          # growth 0.1 < g
        [False]
    """
    n_tilde = token_norms(x_tilde)  # [B]
    accepted = (
        active
        & (n_tilde > tau)
        & (n_tilde - n_k >= g * n_k)  # (‖x̃‖ − ‖xᵏ‖)/‖xᵏ‖ ≥ g
        & (n_tilde < b * tau)
    )
    x_next = torch.where(accepted[:, None], x_tilde, x_k)  # [B, d]
    n_next = torch.where(accepted, n_tilde, n_k.to(n_tilde.dtype))  # [B]
    return ALRRStep(x_next, n_next, accepted, accepted)


def alrr_static_accept(x_k: Tensor, n_k: Tensor, x_tilde: Tensor, active: Tensor) -> ALRRStep:
    """Static mode: every active row keeps x̃ (the "duplicate a block" baseline).

    Args:
        x_k: [B, d] current state.
        n_k: [B] ‖xᵏ‖.
        x_tilde: [B, d] the re-run output.
        active: [B] bool; in static mode pass ``valid``.

    Returns:
        An :class:`ALRRStep` with ``accepted == still_active == active``.

    Example:
        >>> import torch
        >>> s = alrr_static_accept(torch.ones(1, 2), torch.ones(1), torch.zeros(1, 2),
        ...                        torch.tensor([True]))
        >>> s.x_next.tolist()
        [[0.0, 0.0]]
    """
    n_tilde = token_norms(x_tilde)
    x_next = torch.where(active[:, None], x_tilde, x_k)
    n_next = torch.where(active, n_tilde, n_k.to(n_tilde.dtype))
    return ALRRStep(x_next, n_next, active, active)


class ALRRResult(NamedTuple):
    """What :func:`alrr_run` returns.

    Attributes:
        x: [B, d] the final state x^k (x⁰ for rows that never recursed).
        n: [B] float32 its norm.
        tried: [B] int64 number of re-run passes evaluated for the row.
        accepted: [B] int64 number of passes kept.
    """

    x: Tensor
    n: Tensor
    tried: Tensor
    accepted: Tensor


def alrr_run(
    x0: Tensor,
    tau: Tensor,
    valid: Tensor,
    rerun: Callable[[Tensor], Tensor],
    *,
    K: int,
    g: float,
    b: float,
    static: bool = False,
) -> ALRRResult:
    """ALRR at one layer: activity test, then K passes of ``rerun`` (static unroll).

    ``rerun`` is called on all rows every pass (fixed shapes); rows that are
    inactive simply ignore its output. With ``K == 0`` nothing is re-run and
    x⁰ comes back unchanged.

    Args:
        x0: [B, d] x⁰, the normal pass's output.
        tau: [B] τ_l per row.
        valid: [B] bool, False for finished/padding rows (never recurse).
        rerun: x ↦ f_l(x) on [B, d], **without writing the KV cache**.
        K: maximum number of extra passes (static mode: forced passes).
        g: minimum relative growth (adaptive mode).
        b: upper band factor (adaptive mode).
        static: always accept for valid rows, ignoring τ, g and b.

    Returns:
        An :class:`ALRRResult`.

    Example:
        >>> import torch
        >>> x0 = torch.tensor([[5.0]]); tau = torch.tensor([4.0]); ok = torch.tensor([True])
        >>> alrr_run(x0, tau, ok, lambda x: 2 * x, K=1, g=0.2, b=1.5).accepted.tolist()
        [0]
    """
    n = token_norms(x0)  # [B]
    active = valid if static else alrr_active(n, tau, b, valid)  # [B] bool
    x = x0
    tried = torch.zeros_like(n, dtype=torch.int64)
    acc = torch.zeros_like(tried)
    for _ in range(K):  # K is a Python int: a static unroll
        x_tilde = rerun(x)
        tried = tried + active.long()
        if static:
            step = alrr_static_accept(x, n, x_tilde, active)
        else:
            step = alrr_accept(x, n, x_tilde, tau, active, g, b)
        x, n, active = step.x_next, step.n_next, step.still_active
        acc = acc + step.accepted.long()
    return ALRRResult(x, n, tried, acc)


class ALRRCounters(NamedTuple):
    """Per-row, per-layer pass counts (for reports: how often ALRR fired).

    Attributes:
        tried: [B, n_layers] int64 passes evaluated.
        accepted: [B, n_layers] int64 passes kept.
    """

    tried: Tensor
    accepted: Tensor


def alrr_counters_init(B: int, n_layers: int, *, device: torch.device | str = "cpu") -> ALRRCounters:
    """Zeroed counters.

    Args:
        B: rows.
        n_layers: number of recursion layers (column ``slot`` = the slot-th one).
        device: where the counters live.

    Example:
        >>> alrr_counters_init(2, 3).tried.shape
        torch.Size([2, 3])
    """
    z = torch.zeros(B, n_layers, dtype=torch.int64, device=device)
    return ALRRCounters(z, z.clone())


def alrr_counters_add(counters: ALRRCounters, slot: int, tried: Tensor, accepted: Tensor) -> ALRRCounters:
    """Add one step's counts for the layer in column ``slot``.

    Args:
        counters: the running counts.
        slot: Python int, the layer's column.
        tried: [B] int64 or bool, passes evaluated this step.
        accepted: [B] int64 or bool, passes kept this step.

    Returns:
        The updated counts (a new tuple; the inputs are not modified).

    Example:
        >>> import torch
        >>> c = alrr_counters_init(2, 2)
        >>> c = alrr_counters_add(c, 1, torch.tensor([1, 0]), torch.tensor([1, 0]))
        >>> c.accepted.tolist()
        [[0, 1], [0, 0]]
    """
    n_layers = counters.tried.shape[1]
    col = torch.arange(n_layers, device=counters.tried.device) == slot  # [n_layers]
    col = col.to(torch.int64)[None, :]  # [1, n_layers]
    return ALRRCounters(
        counters.tried + tried.to(torch.int64)[:, None] * col,
        counters.accepted + accepted.to(torch.int64)[:, None] * col,
    )
