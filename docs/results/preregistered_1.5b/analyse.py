"""The pre-registered analysis of issue 27 (``PLAN.md``): run once, after the run holds all its items.

Reads a finished run's report (``RUN/report/report.json`` and ``per_item.csv``,
written by ``l2reason report RUN``) and prints, in this order:

1. **Primary**: the report's own paired-bootstrap CI of accuracy
   (``l2-probe-cv:l2``) − accuracy(``majority``) (10,000 resamples; the row's
   ``vs_majority`` field, not recomputed) and the decision: success iff its
   lower bound is > 0 (unrounded).
2. **Secondary** (no claim rests on them; unadjusted CIs): the rule vs
   ``deepconf`` (paired bootstrap, 10,000 resamples, seed 0; exact McNemar);
   the secondary rules vs majority as the report gives them; the rule vs its
   own ablations ``l2-probe-cv:base`` and ``l2-probe-cv:confidence`` (does the
   gain need the ℓ2 features?); for ``gsm_symbolic``, the primary difference
   with a template-clustered paired bootstrap (items of one template are
   resampled together; seed 0).

It refuses a run whose item count is not the pre-registered one (``--expect-items``).

Usage (``PYTHONPATH``: the frozen code of ``PLAN.md``, extracted with ``git archive``):
    PYTHONPATH=../l2r-827b11e .venv/bin/python docs/results/preregistered_1.5b/analyse.py RUN [--expect-items 560]
"""

# ruff: noqa: T201  (a script: it prints its Markdown report, as benchmarks/ do)
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from l2reason.eval.stats import mcnemar, paired_bootstrap

RULE, MAJORITY, DEEPCONF = "l2-probe-cv:l2", "majority", "deepconf"
SECONDARY_RULES = ("l2-probe-cv", "l2-probe-vote-cv", "l2-vote:C/T", "l2-probe-cv:confidence", "l2-probe-cv:base")
ABLATIONS = ("l2-probe-cv:base", "l2-probe-cv:confidence")
N_BOOT = 10_000


def _fmt(d: float, lo: float, hi: float) -> str:
    return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _paired_line(name: str, a: np.ndarray, b: np.ndarray) -> str:
    d, lo, hi, p = paired_bootstrap(a, b, n_boot=N_BOOT, seed=0)
    b01, b10, pm = mcnemar(b, a)  # (b wrong & a right, b right & a wrong): wins and losses of a
    return f"| {name} | {_fmt(d, lo, hi)} | {p:.3f} | +{b01}/−{b10} | {pm:.3f} |"


def template_clustered(seed: int, index: np.ndarray, d: np.ndarray, n_boot: int = N_BOOT) -> tuple[float, float]:
    """Paired-bootstrap 95% CI of mean(d) resampling gsm_symbolic templates (all of a template's items together)."""
    from l2reason.eval.datasets import GSMSymbolic

    tasks = GSMSymbolic(seed=seed, size=int(index.max()) + 1)._ds.task_indices  # reasoning_gym: template per item
    tmpl = np.array([tasks[i] for i in index])
    keys = np.unique(tmpl)
    sums = np.array([d[tmpl == k].sum() for k in keys])
    counts = np.array([(tmpl == k).sum() for k in keys], dtype=float)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, keys.size, size=(n_boot, keys.size))
    means = sums[idx].sum(1) / counts[idx].sum(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the run folder (or a folder holding report.json and per_item.csv)")
    ap.add_argument("--expect-items", type=int, default=560, help="the pre-registered number of items")
    args = ap.parse_args(argv)
    rep_dir = args.run / "report" if (args.run / "report" / "report.json").is_file() else args.run
    rep = json.loads((rep_dir / "report.json").read_text(encoding="utf-8"))
    with open(rep_dir / "per_item.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rep["n_items"] != args.expect_items or len(rows) != args.expect_items:
        print(f"refused: the run has {rep['n_items']} items, the plan {args.expect_items}; finish the run first")
        return 2
    by = {m["name"]: m for m in rep["methods"]}
    cfg = rep["config"]
    print(f"# Pre-registered analysis: {cfg['dataset']}, {rep['n_items']} items, N = {cfg['n']}, {cfg['model_id']}\n")
    vm = by[RULE]["vs_majority"]
    ok = vm["lo"] > 0.0
    print("## Primary: accuracy(l2-probe-cv:l2) − accuracy(majority@8), the report's paired bootstrap\n")
    print(f"- {RULE}: {100 * by[RULE]['acc']:.1f}%, majority: {100 * by[MAJORITY]['acc']:.1f}%")
    print(f"- Δ = {_fmt(vm['diff'], vm['lo'], vm['hi'])} points (lower bound {vm['lo']!r}), p = {vm['p_boot']:.3f}")
    print(f"- +{vm['wins']}/−{vm['losses']} items, exact McNemar p = {vm['p_mcnemar']:.3f}")
    print(f"- **decision: {'SUCCESS (lower bound > 0)' if ok else 'NOT SHOWN (lower bound ≤ 0)'}**\n")

    col = {name: np.array([float(r[name]) for r in rows]) for name in (RULE, MAJORITY, DEEPCONF, *ABLATIONS)}
    print("## Secondary (no claim rests on these; unadjusted)\n")
    print("| comparison | Δ points [95% CI] | bootstrap p | wins/losses | McNemar p |")
    print("|---|---|---:|---|---:|")
    print(_paired_line(f"{RULE} − {DEEPCONF}", col[RULE], col[DEEPCONF]))
    for ab in ABLATIONS:
        print(_paired_line(f"{RULE} − {ab}", col[RULE], col[ab]))
    for name in SECONDARY_RULES:
        m = by.get(name, {}).get("vs_majority")
        if m:
            print(
                f"| {name} − majority (report) | {_fmt(m['diff'], m['lo'], m['hi'])} | {m['p_boot']:.3f} | "
                f"+{m['wins']}/−{m['losses']} | {m['p_mcnemar']:.3f} |"
            )
    family, _, opts = cfg["dataset"].partition(":")
    if family == "gsm_symbolic":
        seed = int(dict(kv.split("=") for kv in opts.split(","))["seed"])
        index = np.array([int(r["index"]) for r in rows])
        lo, hi = template_clustered(seed, index, col[RULE] - col[MAJORITY])
        d = float((col[RULE] - col[MAJORITY]).mean())
        print(f"| {RULE} − majority, template-clustered bootstrap | {_fmt(d, lo, hi)} | – | – | – |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
