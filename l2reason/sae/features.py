"""Reasoning features: the SAE features that fire more on high-norm tokens (and on right answers).

:func:`encode_store` runs the SAE over every stored token of a layer once;
:func:`rank_by_norm` compares each feature's mean activation on high-norm
tokens (norm above the layer's ``quantile``; the paper's calibrated τ is the
0.95 quantile) with the rest; :func:`rank_by_correct` compares tokens of
right and wrong candidates; :func:`top_contexts_html` shows a feature's
strongest tokens in their generated context, like the norm trace.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from l2reason.errors import ConfigError
from l2reason.sae.store import ActivationStore

__all__ = [
    "check_quantile",
    "check_top",
    "encode_store",
    "norm_activation_correlation",
    "rank_by_correct",
    "rank_by_norm",
    "top_contexts_html",
]


@torch.no_grad()
def encode_store(sae: Any, store: ActivationStore, layer: int, chunk: int = 4096) -> torch.Tensor:
    """``[N, d_sae]`` float32 feature activations of every stored token of ``layer``.

    Raises:
        ConfigError: the SAE does not read this store's states at ``layer``
            (:func:`~l2reason.sae.train.check_sae_for`: another width, or trained on another layer).
    """
    from l2reason.sae.train import check_sae_for

    check_sae_for(sae, store, layer)
    x = store.states(layer)
    return torch.cat([sae.encode(x[i : i + chunk]).float() for i in range(0, len(x), chunk)])


def _rank(acts: torch.Tensor, group: torch.Tensor, top: int, names: tuple[str, str]) -> list[dict[str, Any]]:
    a, b = acts[group], acts[~group]
    if len(a) == 0 or len(b) == 0:
        raise ConfigError(f"one side is empty ({len(a)} {names[0]} tokens, {len(b)} {names[1]} tokens)")
    ma, mb = a.mean(0), b.mean(0)  # [d_sae]
    fa, fb = (a > 0).float().mean(0), (b > 0).float().mean(0)
    # Standardised difference: the gap in units of the feature's overall spread, so rare
    # strong features and common weak ones are comparable.
    sd = acts.std(0).clamp_min(1e-6)
    score = (ma - mb) / sd
    order = torch.argsort(score, descending=True)[:top]
    return [
        {
            "feature": int(i),
            "score": float(score[i]),
            f"mean_{names[0]}": float(ma[i]),
            f"mean_{names[1]}": float(mb[i]),
            f"fire_{names[0]}": float(fa[i]),
            f"fire_{names[1]}": float(fb[i]),
        }
        for i in order.tolist()
    ]


def rank_by_norm(
    acts: torch.Tensor, norms: torch.Tensor, quantile: float = 0.95, top: int = 20
) -> tuple[float, list[dict[str, Any]]]:
    """``(τ, features)``: the ``top`` features by standardised mean-activation gap, high-norm (> τ) minus the rest.

    Args:
        acts: ``[N, d_sae]`` feature activations (:func:`encode_store`).
        norms: ``[N]`` the tokens' norms at that layer.
        quantile: τ is this quantile of ``norms``, in (0, 1).
        top: how many features to return (>= 1).

    Raises:
        ConfigError: a quantile outside (0, 1) (NaN included), ``top`` < 1, ``acts`` and ``norms`` of
            different lengths, or no token on one side of τ.
    """
    check_quantile(quantile)
    check_top(top)
    if acts.ndim != 2 or norms.ndim != 1 or len(acts) != len(norms):
        raise ConfigError(f"acts {tuple(acts.shape)} and norms {tuple(norms.shape)} must be [N, d_sae] and [N]")
    if len(norms) == 0:
        raise ConfigError("no tokens to rank features on")
    tau = float(torch.quantile(norms.float(), quantile))
    return tau, _rank(acts, norms > tau, top, ("high", "low"))


def rank_by_correct(acts: torch.Tensor, correct: torch.Tensor, top: int = 20) -> list[dict[str, Any]]:
    """The ``top`` features by standardised mean-activation gap, tokens of right minus wrong candidates."""
    check_top(top)
    return _rank(acts, correct, top, ("right", "wrong"))


def check_quantile(q: Any) -> float:
    """A quantile that splits tokens into high and low: a number strictly inside (0, 1).

    Raises:
        ConfigError: anything else (1.5, -0.5, NaN, a string).
    """
    if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 < q < 1.0:
        raise ConfigError(f"quantile must be a number in (0, 1), e.g. 0.95 (got {q!r})")
    return float(q)


def check_top(top: Any) -> int:
    """How many features to keep: an integer >= 1.

    Raises:
        ConfigError: anything else.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ConfigError(f"top must be an integer >= 1 (got {top!r})")
    return top


def norm_activation_correlation(acts: torch.Tensor, norms: torch.Tensor, features: Sequence[int]) -> float:
    """Pearson correlation between ``‖x‖`` and the summed activation of ``features`` over the tokens."""
    s = acts[:, list(features)].sum(-1).double().numpy()
    n = norms.double().numpy()
    if s.std() == 0 or n.std() == 0:
        return float("nan")
    return float(np.corrcoef(s, n)[0, 1])


def top_contexts_html(
    acts: torch.Tensor,
    store: ActivationStore,
    features: Sequence[dict[str, Any]],
    *,
    per_feature: int = 8,
    window: int = 12,
    title: str = "Top-activating tokens",
) -> str:
    """A self-contained HTML page: for each feature, its ``per_feature`` strongest tokens in context.

    Token ``t`` of a candidate is shown where the state of decode step ``t``
    is (the backend's convention: that state sits at the previous position and
    *produced* token ``t``), so the highlighted token is the one the firing
    state predicted; the tokens around it are shaded by the feature's
    activation at the states that produced them (darker = stronger).
    """
    rec, step = store.token_index()
    records = store.records()
    # (record, step) -> row, to look up the activation of the context tokens
    row_of = {(int(r), int(t)): k for k, (r, t) in enumerate(zip(rec.tolist(), step.tolist(), strict=True))}
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto} .ctx{font-family:monospace;"
        "white-space:pre-wrap;margin:2px 0;padding:3px;border-bottom:1px solid #eee} .hit{outline:2px solid #c00}"
        " td,th{padding:2px 8px;text-align:right}</style>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>store: {html.escape(str(store.path))}, model {html.escape(store.model_id)}, {len(rec)} tokens. "
        "Each token is shaded by the feature's activation at the state that produced it (the highlighted one: "
        "the strongest).</p>",
    ]
    for feat in features:
        i = int(feat["feature"])
        col = acts[:, i]
        mx = float(col.max()) or 1.0
        stats = ", ".join(f"{k} {v:.3g}" for k, v in feat.items() if k != "feature" and isinstance(v, float))
        parts.append(f"<h2>feature {i}</h2><p>{html.escape(stats)}</p>")
        for k in torch.argsort(col, descending=True)[:per_feature].tolist():
            if float(col[k]) <= 0:
                break
            r, t = int(rec[k]), int(step[k])
            toks = records[r].get("tokens") or []
            spans = []
            for s in range(max(0, t - window), min(len(toks), t + window + 1)):
                kk = row_of.get((r, s))
                a = float(col[kk]) / mx if kk is not None else 0.0
                cls = " class='hit'" if s == t else ""
                spans.append(
                    f"<span{cls} style='background:rgba(255,120,0,{max(0.0, a):.2f})' "
                    f"title='{float(col[kk]) if kk is not None else 0:.3g}'>{html.escape(toks[s])}</span>"
                )
            parts.append(
                f"<div class='ctx'><b>{float(col[k]):.3g}</b> [{html.escape(str(records[r].get('item')))} "
                f"#{records[r].get('candidate')} step {t}] {''.join(spans)}</div>"
            )
    return "\n".join(parts)
