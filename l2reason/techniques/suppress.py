"""The paper's causal check: suppress high-norm tokens vs random tokens.

``docs/techniques.md``, "Suppression (the causal check)": damp the residual stream of high-norm tokens
(scale by 0.1, or clamp to τ/4) and compare the accuracy drop with damping
random tokens at the same rate (5%). The random draw is a counter-based hash
of (row seed, row step), independent of the norm, so it runs in a captured
graph and is reproducible.

Example:
    >>> import torch
    >>> x = torch.tensor([[6.0, 8.0], [0.6, 0.8]]); n = x.norm(dim=-1)
    >>> out, hit = suppress_step(x, n, torch.full((2,), 4.0), torch.ones(2, dtype=torch.bool),
    ...     target="high_norm", action="clamp", scale=0.1, rate=0.05,
    ...     seed=torch.zeros(2, dtype=torch.int64), step=torch.zeros(2, dtype=torch.int64))
    >>> out.norm(dim=-1).tolist(), hit.tolist()          # row 0 clamped to τ/4 = 1
    ([1.0, 1.0], [True, False])
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from l2reason.errors import ConfigError
from l2reason.techniques.rng import STREAM_SUPPRESS, hash_uniform

__all__ = ["CLAMP_FRACTION", "suppress_step"]

CLAMP_FRACTION = 0.25  # paper: clamp suppressed tokens to τ/4
_EPS = 1e-12


def suppress_step(
    x: Tensor,
    n: Tensor,
    tau: Tensor,
    valid: Tensor,
    *,
    target: Literal["high_norm", "random"],
    action: Literal["scale", "clamp"],
    scale: float,
    rate: float,
    seed: Tensor,
    step: Tensor,
) -> tuple[Tensor, Tensor]:
    """Suppress the targeted rows (pure, fixed-shape, fullgraph-compilable).

    Args:
        x: [B, d] residual stream after the layer, newest token.
        n: [B] ‖x‖.
        tau: [B] τ_l (+inf during warm-up: no high-norm row; clamp is a no-op).
        valid: [B] bool; False rows are never suppressed.
        target: ``"high_norm"`` (n > τ) or ``"random"`` (u < rate, u =
            hash_uniform(seed, step, STREAM_SUPPRESS), independent of n).
        action: ``"scale"`` (x·scale) or ``"clamp"`` (x·min(1, (τ/4)/n)).
        scale: factor for ``"scale"``.
        rate: probability per step for ``"random"``.
        seed: [B] int64 row seeds.
        step: [B] int64 row step counters (the caller advances them).

    Returns:
        (x_out [B, d] same dtype as x, suppressed [B] bool).

    Raises:
        ConfigError: unknown target or action.

    Example:
        See the module docstring.
    """
    if target == "high_norm":
        hit = n > tau  # [B]
    elif target == "random":
        hit = hash_uniform(seed, step, stream=STREAM_SUPPRESS) < rate  # [B]
    else:
        raise ConfigError(f'target must be "high_norm" or "random" (got {target!r})')
    hit = hit & valid
    nf = n.to(torch.float32)
    if action == "scale":
        factor = torch.full_like(nf, scale)  # [B]
    elif action == "clamp":
        cap = CLAMP_FRACTION * tau.to(torch.float32)  # [B] τ/4
        factor = torch.clamp(cap / nf.clamp_min(_EPS), max=1.0)  # min(1, (τ/4)/n)
    else:
        raise ConfigError(f'action must be "scale" or "clamp" (got {action!r})')
    x_new = (x.to(torch.float32) * factor[:, None]).to(x.dtype)
    return torch.where(hit[:, None], x_new, x), hit
