"""The norm bound: a token's residual norm caps how strongly any SAE feature can fire.

For an SAE whose encoder computes the pre-activation
``p_i(x) = w_i·(x − b_dec) + b_i`` (``w_i`` = column ``i`` of ``W_enc``,
``b_i = b_enc[i]``), Cauchy–Schwarz gives, for every feature and token,

    p_i(x) ≤ ‖w_i‖·‖x − b_dec‖ + b_i

and so ``f_i(x) ≤ max(0, ‖w_i‖·‖x − b_dec‖ + b_i)`` for ReLU, JumpReLU and
TopK activations (each is 0 or ``p_i``). It is an upper bound, not a law:
:func:`check_norm_bound` counts violations (0 for any SAE whose encoder is
the affine map its weights say, up to float rounding) and measures how tight
the bound is for the features that fire: ``cos_i = (p_i − b_i) / (‖w_i‖·‖x − b_dec‖)``,
the cosine between the token and the feature's encoder direction.

``p_i`` is read from the SAE's own forward pass (SAELens's
``hook_sae_acts_pre``), the right-hand side from its weights, so the check
catches an encoder that does something its weights do not describe (an
unfolded input scaling, a modified forward).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from l2reason.errors import ConfigError

__all__ = ["BoundReport", "check_norm_bound", "check_store_bound", "tightness_by_norm"]


@dataclass
class BoundReport:
    """What :func:`check_norm_bound` found.

    Args:
        tokens, features: how many were checked (every pair was).
        violations: pairs with ``p_i > bound_i + tol_i``.
        max_excess: the largest ``(p_i − bound_i) / scale_i`` (≤ 0 when the bound holds).
        firing: (token, feature) pairs with ``f_i > 0``.
        cos: ``[firing]`` the tightness of each firing pair (1 = the bound is met exactly).
        token_norm: ``[firing]`` ``‖x‖`` of the token of each firing pair.
        ratio: ``[firing]`` ``f_i / bound_i``.
    """

    tokens: int
    features: int
    violations: int
    max_excess: float
    firing: int
    cos: np.ndarray = field(repr=False)
    token_norm: np.ndarray = field(repr=False)
    ratio: np.ndarray = field(repr=False)

    def summary(self) -> dict[str, Any]:
        c = self.cos
        return {
            "tokens": self.tokens,
            "features": self.features,
            "pairs": self.tokens * self.features,
            "violations": self.violations,
            "max_excess": self.max_excess,
            "firing_pairs": self.firing,
            "cos_firing_median": float(np.median(c)) if len(c) else None,
            "cos_firing_p90": float(np.quantile(c, 0.9)) if len(c) else None,
            "cos_firing_max": float(c.max()) if len(c) else None,
            "ratio_firing_median": float(np.median(self.ratio)) if len(c) else None,
        }


@torch.no_grad()
def check_norm_bound(sae: Any, x: torch.Tensor, *, rtol: float = 1e-4, chunk: int = 2048) -> BoundReport:
    """Check ``p_i(x) ≤ ‖w_i‖·‖x − b_dec‖ + b_i`` for every feature of ``sae`` and every row of ``x``.

    Args:
        sae: a SAELens SAE (any architecture with ``W_enc``, ``b_enc``, ``b_dec``).
        x: ``[N, d_in]`` residual states (the model's raw states, as collected).
        rtol: tolerance relative to ``‖w_i‖·‖x − b_dec‖ + |b_i|`` (float32 rounding of a d-term dot product).

    Raises:
        ConfigError: ``x`` is not ``[N, d_in]`` for this SAE.

    Example:
        >>> rep = check_norm_bound(load_sae("sae_l20"), store.states(20))  # doctest: +SKIP
        >>> rep.violations  # doctest: +SKIP
        0
    """
    W = sae.W_enc.detach().float()  # [d_in, d_sae]
    if x.ndim != 2 or x.shape[1] != W.shape[0]:
        raise ConfigError(f"the SAE reads {W.shape[0]}-dim states; got states of shape {tuple(x.shape)}")
    b = sae.b_enc.detach().float()  # [d_sae]
    b_dec = sae.b_dec.detach().float()  # [d_in]
    w_norm = W.norm(dim=0)  # [d_sae] ‖w_i‖
    captured: list[torch.Tensor] = []
    handle = sae.hook_sae_acts_pre.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    violations, excess = 0, -float("inf")
    cos_l, norm_l, ratio_l = [], [], []
    try:
        for i in range(0, len(x), chunk):
            xb = x[i : i + chunk].float()  # [n, d_in]
            captured.clear()
            f = sae.encode(xb).float()  # [n, d_sae] the SAE's own activations
            p = captured[-1].float()  # [n, d_sae] its own pre-activations
            u = (xb - b_dec).norm(dim=-1, keepdim=True)  # [n, 1] ‖x − b_dec‖
            reach = w_norm[None, :] * u  # [n, d_sae] ‖w_i‖·‖x − b_dec‖
            bound = reach + b[None, :]
            scale = reach + b.abs()[None, :] + 1e-12
            over = (p - bound) / scale
            violations += int((over > rtol).sum())
            excess = max(excess, float(over.max()))
            fire = f > 0
            cos_l.append(((p - b[None, :]) / reach.clamp_min(1e-12))[fire].numpy())
            norm_l.append(xb.norm(dim=-1, keepdim=True).expand_as(f)[fire].numpy())
            ratio_l.append((f / bound.clamp_min(1e-12))[fire].numpy())
    finally:
        handle.remove()
    cos = np.concatenate(cos_l) if cos_l else np.zeros(0)
    return BoundReport(
        tokens=len(x),
        features=int(W.shape[1]),
        violations=violations,
        max_excess=excess,
        firing=len(cos),
        cos=cos,
        token_norm=np.concatenate(norm_l) if norm_l else np.zeros(0),
        ratio=np.concatenate(ratio_l) if ratio_l else np.zeros(0),
    )


def check_store_bound(sae: Any, store: Any, layer: int) -> BoundReport:
    """:func:`check_norm_bound` on every stored token of ``layer``, once the SAE is known to read them.

    Raises:
        ConfigError: the SAE reads another width or was trained on another layer
            (:func:`~l2reason.sae.train.check_sae_for`), or the layer is not in the store.
    """
    from l2reason.sae.train import check_sae_for

    check_sae_for(sae, store, layer)
    return check_norm_bound(sae, store.states(layer))


def tightness_by_norm(rep: BoundReport, bins: int = 10) -> list[dict[str, float]]:
    """The firing pairs' tightness per token-norm decile: median cos and ratio, and the count."""
    if rep.firing == 0:
        return []
    edges = np.quantile(rep.token_norm, np.linspace(0, 1, bins + 1))
    rows = []
    for lo, hi in itertools.pairwise(edges):
        m = (rep.token_norm >= lo) & (rep.token_norm <= hi)
        if not m.any():
            continue
        rows.append(
            {
                "norm_lo": float(lo),
                "norm_hi": float(hi),
                "pairs": int(m.sum()),
                "cos_median": float(np.median(rep.cos[m])),
                "ratio_median": float(np.median(rep.ratio[m])),
            }
        )
    return rows
