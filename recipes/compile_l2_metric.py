"""Unsupervised compile: BootstrapFewShot with the ℓ2 metric (no labels), checked on a labelled dev split.

1. Train split *without answers*: BootstrapFewShot keeps the demos whose
   traces score highest on ``l2_metric`` (fraction of late-layer norm
   exceedances, C/T) — no gold labels are read.
2. Dev split *with answers*: the uncompiled and the compiled program are
   scored for accuracy on the same problems.

    python recipes/compile_l2_metric.py                 # default model, 2 + 2 items: a few minutes on 2 CPU cores
    python recipes/compile_l2_metric.py --model fast --train 3 --dev 3

The defaults are a smoke run, not a comparison. The measured comparison (50
unlabelled train items, 100 held-out items, five conditions: uncompiled, exact
match with labels, ``l2_metric``, a self-certainty metric, random demos; paired
CIs) is ``docs/results/used_by_metric/README.md``, made by
``python benchmarks/used_by_metric.py``.
"""

from __future__ import annotations

import argparse
import time

import dspy

import l2reason.dspy as l2
from l2reason.eval.datasets import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--dataset", default="basic_arithmetic")
    ap.add_argument("--train", type=int, default=2)
    ap.add_argument("--dev", type=int, default=2)
    ap.add_argument("--demos", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.01, help="l2_metric (C/T) a demo must reach")
    ap.add_argument("--max-tokens", type=int, default=100)
    args = ap.parse_args()

    data = load_dataset(args.dataset)
    items = data.items(limit=args.train + args.dev)
    train = [dspy.Example(question=it.question).with_inputs("question") for it in items[: args.train]]  # no labels
    dev_items = items[args.train :]
    l2.configure_dspy(args.model, max_tokens=args.max_tokens)

    program = l2.L2Observe(dspy.ChainOfThought("question -> answer"))
    t0 = time.perf_counter()
    tele = dspy.BootstrapFewShot(
        metric=l2.l2_metric,
        metric_threshold=args.threshold,
        max_bootstrapped_demos=args.demos,
        max_labeled_demos=0,
        max_rounds=1,
    )
    compiled = tele.compile(program, trainset=train)
    t_compile = time.perf_counter() - t0
    print(f"compiled with {len(compiled.module.predict.demos)} ℓ2-selected demos in {t_compile:.0f}s")

    def accuracy(prog: dspy.Module) -> tuple[int, list[float | None]]:
        ok, scores = 0, []
        for it in dev_items:
            try:
                pred = prog(question=it.question)
                ok += data.score(str(pred.answer), it)
                scores.append(pred.l2.score)
            except Exception:
                scores.append(None)
        return ok, scores

    t1 = time.perf_counter()
    base_ok, base_sc = accuracy(program)
    t2 = time.perf_counter()
    comp_ok, comp_sc = accuracy(compiled)
    t3 = time.perf_counter()
    n = len(dev_items)
    print(f"\nmodel={args.model} dataset={args.dataset} train={args.train} (unlabelled) dev={n} demos={args.demos}")
    print(f"uncompiled: {base_ok}/{n}  mean ℓ2 B/T={_mean(base_sc)}  ({t2 - t1:.0f}s)")
    print(f"compiled:   {comp_ok}/{n}  mean ℓ2 B/T={_mean(comp_sc)}  ({t3 - t2:.0f}s)")


def _mean(xs: list[float | None]) -> str:
    v = [x for x in xs if x is not None]
    return f"{sum(v) / len(v):.4f}" if v else "—"


if __name__ == "__main__":
    main()
