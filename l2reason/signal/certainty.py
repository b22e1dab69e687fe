"""Self-certainty of a next-token distribution, from the logits.

``SC_t = -(1/V) Σ_j log(V·p_j) = -log V - mean_j log p_j`` (Kang et al.
2025), at temperature 1: the KL divergence of the uniform distribution from
the model's next-token distribution. Higher = more peaked = more certain.
The embedded backend and both engine plugins call this one function, so the
three report the same numbers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["self_certainty"]


def self_certainty(logits: Tensor) -> Tensor:
    """Per-row self-certainty of ``softmax(logits)``.

    Args:
        logits: ``[..., V]`` next-token logits (any float dtype; computed in float32).

    Returns:
        ``[...]`` float32, ``>= 0`` (0 for a uniform distribution).

    Example:
        >>> float(self_certainty(torch.zeros(1, 8))[0])
        0.0
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -math.log(logp.shape[-1]) - logp.mean(-1)
