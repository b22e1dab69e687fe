"""The report folder: ``report.md``, ``report.json``, ``per_item.csv`` and the plots.

``report.json`` holds every number of the report (NaN as ``null``);
``per_item.csv`` one row per item and one 0/1 column per row of the table, to
re-check any comparison.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

from l2reason.errors import ConfigError
from l2reason.eval.harness import RunData, load_run, stored_json
from l2reason.eval.report.compute import compute_report
from l2reason.eval.report.data import MethodRow, ReportData
from l2reason.eval.report.tables import render_markdown

logger = logging.getLogger(__name__)


def write_report(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    plots: bool = True,
    n_boot: int = 10_000,
    n_subsamples: int = 200,
) -> Path:
    """Compute and write ``report.md``, ``report.json``, ``per_item.csv`` and the plots.

    Args:
        run_dir: the run folder.
        out: the report folder (default ``RUN_DIR/report``).
        plots: draw the PNG plots (matplotlib).
        n_boot: bootstrap resamples.
        n_subsamples: subsets per item and N for accuracy vs N.

    Returns:
        The path of ``report.md``.
    """
    run = load_run(run_dir)
    if not run.samples and not run.gens:
        raise ConfigError(f"{run_dir} holds no finished items yet; let `l2reason eval` run first")
    rep = compute_report(run, n_boot=n_boot, n_subsamples=n_subsamples)
    folder = Path(out) if out is not None else Path(run_dir) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    pics: list[str] = []
    if plots:
        from l2reason.eval.report.plots import draw_plots

        pics = draw_plots(rep, folder)
    (folder / "report.json").write_text(report_json(rep), encoding="utf-8")
    _write_per_item(rep, run, folder / "per_item.csv")
    md = folder / "report.md"
    md.write_text(render_markdown(rep, pics), encoding="utf-8")
    logger.info("wrote %s", md)
    return md


def report_json(rep: ReportData) -> str:
    """The report's numbers as JSON (``report.json``)."""

    def row(r: MethodRow) -> dict[str, Any]:
        d = {k: getattr(r, k) for k in ("name", "kind", "acc", "lo", "hi", "tokens", "seconds", "ties")}
        d["items"] = len(r.correct)
        d["vs_greedy"] = None if r.vs_greedy is None else r.vs_greedy.__dict__
        d["vs_majority"] = None if r.vs_majority is None else r.vs_majority.__dict__
        return d

    return stored_json(
        {
            "config": rep.config,
            "n_items": rep.n_items,
            "band": rep.band,
            "methods": [row(r) for r in rep.rows],
            "signals": rep.signals,
            "layers": rep.layers,
            "accuracy_vs_n": {k: {str(n): v for n, v in c.items()} for k, c in rep.curves.items()},
            "accuracy_vs_n_subsets": {str(n): v for n, v in rep.curve_sizes.items()},
            "probe": rep.probe,
            "truncation": rep.truncation,
            "notes": rep.notes,
        }
    )


def _write_per_item(rep: ReportData, run: RunData, path: Path) -> None:
    """One row per item, one 0/1 column per method (blank: not run on that item), to re-check any comparison."""
    gold = {r.item_id: (r.index, r.gold) for r in run.samples}
    for items in run.gens.values():
        for r in items:
            gold.setdefault(r.item_id, (r.index, r.gold))
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "index", "gold", *(row.name for row in rep.rows)])
        for item_id, (index, g) in sorted(gold.items(), key=lambda kv: kv[1][0]):
            cells = [("" if item_id not in row.correct else int(row.correct[item_id])) for row in rep.rows]
            w.writerow([item_id, index, g, *cells])
