"""The report's PNG plots (matplotlib, imported only when a plot is drawn; the Agg backend, no display).

- ``accuracy.png``: accuracy per row with its 95% CI; rows scored on fewer
  items are hatched and carry their ``n``;
- ``accuracy_vs_n.png``: the accuracy-vs-N curves, with ``sample@1`` as a cross;
- ``auc_per_layer.png``: each layer's mean-norm and B/T AUCs, the band shaded;
- ``norms_right_vs_wrong.png``: per band layer, right vs wrong candidates'
  mean norms, pooled (top) and minus their item's mean (bottom).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from l2reason.eval.report.data import MethodRow, ReportData


def draw_plots(rep: ReportData, folder: Path) -> list[str]:
    """Draws every plot the report has data for into ``folder``; returns their paths in report order."""
    import matplotlib

    matplotlib.use("Agg")

    paths: list[str] = []
    rows = [r for r in rep.rows if r.correct]
    if rows:
        paths.append(_accuracy(rows, folder / "accuracy.png"))
    if rep.curves:
        paths.append(_accuracy_vs_n(rep, folder / "accuracy_vs_n.png"))
    if rep.layers:
        paths.append(_auc_per_layer(rep, folder / "auc_per_layer.png"))
    if rep.norm_dist:
        paths.append(_norms_right_vs_wrong(rep, folder / "norms_right_vs_wrong.png"))
    return paths


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def _accuracy(rows: list[MethodRow], path: Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.36 * len(rows) + 1.6))
    y = np.arange(len(rows))
    acc = np.array([r.acc for r in rows])
    err = np.array([[r.acc - r.lo, r.hi - r.acc] for r in rows]).T
    colors = [
        "tab:gray" if r.kind == "reference" else "tab:blue" if r.kind == "selection" else "tab:orange" for r in rows
    ]
    n_max = max(len(r.correct) for r in rows)
    fewer = [len(r.correct) < n_max for r in rows]
    ax.barh(y, 100 * acc, color=colors, hatch=["//" if f else "" for f in fewer], edgecolor="white")
    # the CI and a marker at the value are drawn apart from the bar, so a 0% row stays visible
    ax.errorbar(100 * acc, y, xerr=100 * err, fmt="none", ecolor="black", capsize=3, lw=1)
    ax.plot(100 * acc, y, "D", color="black", ms=3.5)
    top = float(np.nanmax(100 * np.array([r.hi for r in rows]))) if rows else 100.0
    for yi, r in zip(y, rows, strict=True):
        ax.text(100 * r.hi + 0.01 * max(top, 1.0) + 0.5, float(yi), f"{100 * r.acc:.1f}%", va="center", fontsize=7)
    labels = [f"{r.name} (n={len(r.correct)})" if f else r.name for r, f in zip(rows, fewer, strict=True)]
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(-0.02 * max(top * 1.15, 5.0), max(top * 1.15, 5.0))  # a 0% marker sits clear of the axis
    ax.invert_yaxis()
    ax.set_xlabel(f"accuracy % (95% bootstrap CI); n = {n_max} items unless marked")
    title = "accuracy per method (blue: selection, orange: generation, gray: reference)"
    if any(fewer):
        title += "\nhatched: scored on fewer items (n in the label)"
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _accuracy_vs_n(rep: ReportData, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ks_all = sorted({k for c in rep.curves.values() for k in c})
    for name, curve in rep.curves.items():
        ks = sorted(curve)
        ax.plot(ks, [100 * curve[k] for k in ks], marker="o", label=name)
    s1 = next((r for r in rep.rows if r.name == "sample@1" and r.correct), None)
    if s1 is not None:
        ax.plot([1], [100 * s1.acc], "x", color="black", ms=8, label="sample@1 (candidate 0 only)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks_all, [str(k) for k in ks_all])
    ax.minorticks_off()
    ax.set_xlabel("N (candidates); N = 1: mean accuracy of one sample")
    ax.set_ylabel("accuracy %")
    ax.legend(fontsize=7)
    ax.set_title(
        "accuracy vs N: the table's rule on subsets of the stored candidates\n(at the largest N: the table's value)",
        fontsize=9,
    )
    return _save(fig, path)


def _auc_per_layer(rep: ReportData, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ls = [x["layer"] for x in rep.layers]
    for key, label in (
        ("mean_within_auc", "mean norm, within-item"),
        ("mean_pooled_auc", "mean norm, pooled"),
        ("bt_within_auc", "B/T, within-item"),
        ("bt_pooled_auc", "B/T, pooled"),
    ):
        ax.plot(ls, [x[key] for x in rep.layers], marker=".", label=label)
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    if rep.band:
        ax.axvspan(min(rep.band) - 0.5, max(rep.band) + 0.5, color="tab:green", alpha=0.1, label="default band")
    ax.set_xlabel("layer")
    ax.set_ylabel("AUC for 'candidate is right'")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _norms_right_vs_wrong(rep: ReportData, path: Path) -> str:
    import matplotlib.pyplot as plt

    k = len(rep.norm_dist)
    fig, axes = plt.subplots(2, k, figsize=(3.1 * k, 6), squeeze=False)
    views = (
        ("", "candidate mean ‖x‖", "pooled over items"),
        ("_within", "mean ‖x‖ − item mean", "within item"),
    )
    for row, (suffix, xlabel, what) in enumerate(views):
        for ax, (layer, d) in zip(axes[row], rep.norm_dist.items(), strict=True):
            ax.set_title(f"layer {layer}, {what}", fontsize=8)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel("density (share per unit)", fontsize=8)
            _histograms(ax, d.get("correct" + suffix, []), d.get("incorrect" + suffix, []), centred=bool(suffix))
    fig.suptitle(
        "candidate mean norm, right vs wrong: top pooled across items (between-item view), bottom minus the "
        "item's mean\non items with both right and wrong candidates (the within-item contrast a selector uses)",
        fontsize=8,
    )
    return _save(fig, path)


def _histograms(ax: Any, right: list[float], wrong: list[float], centred: bool) -> None:
    """Right and wrong values as density histograms on shared bins (a dashed 0 line when ``centred``)."""
    vals = right + wrong
    if not vals:
        ax.text(
            0.5,
            0.5,
            "no items with right\nand wrong candidates",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=7,
        )
        return
    lo, hi = min(vals), max(vals)
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 25)
    for vs, label in ((right, f"right ({len(right)})"), (wrong, f"wrong ({len(wrong)})")):
        if vs:
            ax.hist(vs, bins=bins, alpha=0.6, density=True, label=label)
    if centred:
        ax.axvline(0.0, color="k", lw=0.7, ls="--")
    ax.legend(fontsize=7)
