"""Pictures of ℓ2 norms: a layers x tokens heatmap (PNG) and a token-coloured HTML page.

matplotlib is imported inside the functions, so ``import l2reason`` never loads it.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from l2reason.backends.base import Candidate
from l2reason.errors import ConfigError


def _norms(c: Candidate) -> tuple[np.ndarray, list[int], list[str]]:
    if c.norms is None or c.norms.per_token is None:
        raise ConfigError("this candidate carries no per-token norms; request them with NormSpec(per_token=True)")
    arr = c.norms.array()  # [T, n_layers]
    tokens = c.tokens or [str(i) for i in range(arr.shape[0])]
    return arr, c.norms.layers, tokens


def relative_norms(arr: np.ndarray) -> np.ndarray:
    """Each layer's norms divided by that layer's median over tokens.

    Residual norms grow with depth, so raw values would show only the depth
    trend; within-layer ratios show which tokens stand out at each layer.
    """
    med = np.median(arr, axis=0, keepdims=True)
    return arr / np.where(med > 0, med, 1.0)


def _label(tok: str) -> str:
    """A token as a tick label, verbatim: ``$`` is escaped (matplotlib reads ``$...$`` as mathtext)."""
    t = tok.replace("\n", "⏎").replace("\t", "⇥")
    return (t if t.strip() else repr(t)[1:-1] or "␣").replace("$", r"\$")


def norm_heatmap(c: Candidate, out: str | Path, *, title: str | None = None, max_tokens: int = 200) -> Path:
    """Draw a layers x generated-tokens heatmap of ``c``'s norms to ``out`` (PNG/SVG/PDF).

    Colour = norm / layer median (log scale); the generated tokens label the x axis.

    Example:
        >>> norm_heatmap(result.candidates[0], "norms.png")  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    arr, layers, tokens = _norms(c)
    arr, tokens = arr[:max_tokens], tokens[:max_tokens]
    T, n = arr.shape
    rel = np.clip(relative_norms(arr), 1e-3, None)
    width = min(60.0, max(8.0, 0.16 * T + 2))
    height = min(20.0, max(3.0, 0.22 * n + 1.8))
    fig, ax = plt.subplots(figsize=(width, height), constrained_layout=True)
    im = ax.imshow(
        rel.T,
        aspect="auto",
        origin="lower",
        cmap="magma",
        norm=LogNorm(vmin=max(rel.min(), 0.25), vmax=max(rel.max(), 1.01)),
    )
    ax.set_yticks(range(n), [str(layer) for layer in layers], fontsize=7)
    ax.set_xticks(range(T), [_label(t) for t in tokens], rotation=90, fontsize=7)
    ax.set_ylabel("layer (residual after decoder layer l)")
    ax.set_xlabel("generated token")
    ax.set_title(title or f"ℓ2 norm of the residual stream / layer median ({T} tokens)")
    fig.colorbar(im, ax=ax, label="‖x‖ / median over tokens", pad=0.01)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def norm_html(c: Candidate, out: str | Path, *, band: list[int] | None = None, title: str = "ℓ2 norm trace") -> Path:
    """Write an HTML page where each generated token is coloured by its band-mean relative norm.

    Args:
        c: a candidate with per-token norms.
        out: the ``.html`` path.
        band: layers to average (default: all captured layers).
    """
    arr, layers, tokens = _norms(c)
    cols = [layers.index(layer) for layer in band] if band else list(range(len(layers)))
    score = relative_norms(arr)[:, cols].mean(axis=1) if arr.size else np.zeros(0)
    lo, hi = (float(np.percentile(score, 5)), float(np.percentile(score, 95))) if score.size else (0.0, 1.0)
    spans = []
    for tok, s, raw in zip(tokens, score, arr[:, cols].mean(axis=1) if arr.size else [], strict=False):
        a = 0.0 if hi <= lo else float(np.clip((s - lo) / (hi - lo), 0, 1))
        color = f"rgba(220, 60, 20, {a:.2f})" if s >= 1 else f"rgba(40, 90, 220, {min(1.0, (1 - a)) * 0.35:.2f})"
        text = html.escape(tok).replace("\n", "⏎<br>")
        spans.append(
            f'<span title="band-mean ‖x‖ = {raw:.1f} ({s:.2f}× median)" style="background:{color}">{text}</span>'
        )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;line-height:1.7}}
.trace{{font-family:ui-monospace,monospace;white-space:pre-wrap;border:1px solid #ddd;padding:1em}}
.legend span{{padding:0 .4em}}</style></head><body>
<h2>{html.escape(title)}</h2>
<p>Each generated token is coloured by the ℓ2 norm of the residual stream that produced it, averaged over
layers {", ".join(str(layers[i]) for i in cols)} and divided by each layer's median (hover for values).
<span class="legend"><span style="background:rgba(220,60,20,.9)">above median</span>
<span style="background:rgba(40,90,220,.3)">below</span></span></p>
<div class="trace">{"".join(spans)}</div></body></html>"""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
