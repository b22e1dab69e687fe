"""Classic static steering (the comparison for ERSS): x' = x + α·v.

``docs/techniques.md``, "Static steering": a fixed vector per layer, e.g. the mean
difference between high-norm and low-norm decode states on a calibration set
(:func:`steering_vector_from_norms`) or any user vector, added as x + α·v and
optionally rescaled to the original norm, x' ← x'·‖x‖/‖x'‖.

Example:
    >>> import torch
    >>> x = torch.tensor([[3.0, 4.0]]); v = torch.tensor([1.0, 0.0])
    >>> static_steer(x, v, 2.0, torch.tensor([True]), norm_preserving=False).tolist()
    [[5.0, 4.0]]
"""

from __future__ import annotations

import torch
from torch import Tensor

from l2reason.errors import ConfigError

__all__ = ["static_steer", "steering_vector_from_norms"]

_EPS = 1e-12  # guards x'·‖x‖/‖x'‖ when x' = 0


def static_steer(x: Tensor, v: Tensor, alpha: float, valid: Tensor, norm_preserving: bool = False) -> Tensor:
    """Add α·v to the valid rows (pure, fixed-shape, fullgraph-compilable).

    Computed in float32 and cast back once; with α = 0 or v = 0 the output is
    bit-identical to ``x``.

    Args:
        x: [B, d] residual stream after the layer, newest token.
        v: [d] steering vector (or [B, d], one per row).
        alpha: scale α.
        valid: [B] bool; False rows are returned unchanged.
        norm_preserving: rescale each steered row to its original norm ‖x‖.

    Returns:
        [B, d] x', same dtype as x.

    Example:
        >>> import torch
        >>> x = torch.tensor([[3.0, 4.0]])
        >>> y = static_steer(x, torch.tensor([5.0, 0.0]), 1.0, torch.tensor([True]), True)
        >>> round(float(y.norm()), 4)
        5.0
    """
    xf = x.to(torch.float32)  # [B, d]
    y = xf + alpha * v.to(torch.float32)  # [B, d]
    if norm_preserving:
        n_x = torch.linalg.vector_norm(xf, dim=-1, keepdim=True)  # [B, 1]
        n_y = torch.linalg.vector_norm(y, dim=-1, keepdim=True)  # [B, 1]
        y = y * (n_x / n_y.clamp_min(_EPS))
    return torch.where(valid[:, None], y.to(x.dtype), x)


def steering_vector_from_norms(states: Tensor, norms: Tensor, tau: float) -> Tensor:
    """Mean of the high-norm states minus mean of the rest (one layer).

    Post-hoc (calibration time), not a step function.

    Args:
        states: [N, d] decode-token residual states at one layer.
        norms: [N] their norms (usually ``states.norm(dim=-1)``).
        tau: the split: "high" means norm > τ.

    Returns:
        [d] float32 mean(states[n > τ]) − mean(states[n ≤ τ]).

    Raises:
        ConfigError: either side is empty.

    Example:
        >>> import torch
        >>> s = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
        >>> steering_vector_from_norms(s, s.norm(dim=-1), 2.0).tolist()
        [2.5, -0.5]
    """
    high = norms > tau  # [N]
    n_high, n_low = int(high.sum()), int((~high).sum())
    if n_high == 0 or n_low == 0:
        side = "above" if n_high == 0 else "at or below"
        raise ConfigError(
            f"no state has a norm {side} tau={tau:g} ({n_high} high, {n_low} low of "
            f"{len(norms)}): choose tau inside the norms' range "
            f"[{float(norms.min()):g}, {float(norms.max()):g}] or collect more states"
        )
    s = states.to(torch.float32)
    return s[high].mean(dim=0) - s[~high].mean(dim=0)
