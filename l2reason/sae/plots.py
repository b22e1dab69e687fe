"""Figures of the SAE diagnostics (matplotlib, imported only when a plot is drawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_bound"]


def plot_bound(rep: Any, path: str | Path, title: str = "norm bound") -> Path:
    """Two panels: firing features' cos (tightness) vs token norm, and f_i / bound_i vs token norm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from l2reason.sae.bound import tightness_by_norm

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rng = np.random.default_rng(0)
    k = min(rep.firing, 20_000)
    pick = rng.choice(rep.firing, size=k, replace=False) if rep.firing else np.zeros(0, dtype=int)
    rows = tightness_by_norm(rep)
    mids = [(r["norm_lo"] + r["norm_hi"]) / 2 for r in rows]
    for ax, vals, key, label in (
        (axes[0], rep.cos, "cos_median", "cos(w_i, x − b_dec)  (1 = bound met)"),
        (axes[1], rep.ratio, "ratio_median", "f_i / bound_i"),
    ):
        ax.scatter(rep.token_norm[pick], vals[pick], s=2, alpha=0.15, color="tab:blue", label="firing (token, feature)")
        ax.plot(mids, [r[key] for r in rows], "o-", color="tab:red", label="median per norm decile")
        ax.set_xlabel("token norm ‖x‖")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.05)
        ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{title}: {rep.violations} violations in {rep.tokens} tokens x {rep.features} features")
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
