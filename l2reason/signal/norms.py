"""Per-token residual-stream norms and the massive-activation mask.

:func:`token_norms` is the one definition of the norm in l2reason: the
embedded backend, the controllers and the engine plugins all call it.

The signal of the paper is ``n_{l,t} = ‖x_{l,t}‖₂``, the L2 norm of the
residual stream after decoder layer ``l`` at token ``t`` (``docs/techniques.md``,
"Notation"). Tokens with *massive activations* (BOS and a few other
positions whose norm is orders of magnitude above the layer median) are
input-invariant and are excluded from every statistic (``docs/techniques.md``,
"Decode only, and massive activations"); this module finds them.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MASSIVE_FACTOR", "massive_activation_mask", "token_norms"]

# Massive activations sit 2-4 orders of magnitude above the median token norm
# of their layer (Sun et al., "Massive Activations in Large Language Models",
# 2024: ~100x-10,000x). Ordinary decode tokens stay within a few x of the
# median, so a factor of 20 separates the two populations with a wide margin
# on both sides.
MASSIVE_FACTOR = 20.0


def token_norms(hidden: Tensor) -> Tensor:
    """L2 norm of each token's hidden vector, computed in float32.

    Args:
        hidden: ``[..., d]`` residual stream (any float dtype; bf16/fp16 are
            upcast to float32 before squaring so large norms do not overflow).

    Returns:
        ``[...]`` float32 norms (the last dim is reduced).

    Example:
        >>> token_norms(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        tensor([5., 1.])
    """
    return torch.linalg.vector_norm(hidden, ord=2, dim=-1, dtype=torch.float32)  # the cast happens before squaring


def massive_activation_mask(norms: Tensor, valid: Tensor | None = None, factor: float = MASSIVE_FACTOR) -> Tensor:
    """Flag tokens whose norm exceeds ``factor`` x the median of their row.

    The median is taken over the *valid* tokens along the last dim, separately
    for every leading index (e.g. per sequence and layer). Invalid tokens
    (padding) are never flagged; a row with no valid token flags nothing.
    For an even number of valid tokens the lower median is used (as
    ``torch.median``).

    Args:
        norms: ``[..., T]`` token norms (e.g. from :func:`token_norms`).
        valid: ``[..., T]`` bool, True for real tokens; ``None`` = all valid.
        factor: flag ``n_t > factor * median``. The default (20, see
            :data:`MASSIVE_FACTOR`) sits between ordinary tokens (within a
            few x of the median) and massive activations (100x and more).

    Returns:
        ``[..., T]`` bool mask, True for massive-activation tokens.

    Example:
        >>> n = torch.tensor([500.0, 1.0, 1.2, 0.9, 1.1])
        >>> massive_activation_mask(n)
        tensor([ True, False, False, False, False])
    """
    n = norms.to(torch.promote_types(norms.dtype, torch.float32))
    if valid is None:
        valid = torch.ones_like(n, dtype=torch.bool)
    valid = valid.expand_as(n)
    masked = torch.where(valid, n, torch.full_like(n, float("nan")))
    med = torch.nanmedian(masked, dim=-1, keepdim=True).values  # [..., 1]; NaN if no valid
    return valid & (n > factor * med)  # NaN comparisons are False
