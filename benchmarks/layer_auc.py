"""One layer's mean norm against a confidence score: within-item AUCs with a paired item-bootstrap CI.

An evaluation report lists, for every layer, how well that layer's mean norm
separates right from wrong candidates of the same item (within-item AUC), but
without a CI and after looking at every layer. This script takes the layers
you name (decide them before looking, or confirm on a second run) and
compares each with a confidence score on the same candidate pairs.

Usage:
    python benchmarks/layer_auc.py RUN --layers 25,26 --against deepconf [--out FILE.md]

``RUN`` is an ``l2reason eval`` run folder (``samples.jsonl`` with every
layer's norms and logprobs). Not a test.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from l2reason.errors import ConfigError
from l2reason.eval.harness import load_run
from l2reason.eval.probe import paired_auc_bootstrap
from l2reason.eval.report import _answers_of, _layer_stats, _signals
from l2reason.select import candidate_signals, pooled_tau


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--layers", required=True, help="comma-separated absolute layer indices")
    ap.add_argument("--against", default="deepconf", help="deepconf, deepconf-tail or self-certainty")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--n-boot", type=int, default=10_000)
    args = ap.parse_args(argv)
    layers = [int(x) for x in args.layers.split(",") if x.strip()]
    run = load_run(args.run)
    num_layers = None
    means: list[np.ndarray] = []
    conf: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    used: list[int] = []
    for r in run.samples:
        c0 = r.result.candidates[0]
        if c0.norms is None:
            raise ConfigError(f"{args.run}: the samples carry no norms")
        num_layers = num_layers or max(c0.norms.layers) + 1
        cands, _ = candidate_signals(r.result, layers="band", num_layers=num_layers, extractor=_answers_of(r))
        try:
            sig = _signals(cands, pooled_tau(cands))
        except ConfigError:
            continue
        if args.against not in sig:
            raise ConfigError(f"{args.against!r} is not in the run's scores ({sorted(sig)})")
        m, _, used = _layer_stats(r)
        means.append(m)
        conf.append(np.asarray(sig[args.against], dtype=float))
        labels.append(np.asarray(r.correct, dtype=bool))
    missing = [la for la in layers if la not in used]
    if missing:
        raise ConfigError(f"layers {missing} are not in the run (it has {used[0]}..{used[-1]})")
    model = run.samples[0].result.model_id if run.samples else "?"
    lines = [
        f"# One layer's mean norm vs {args.against}: within-item AUC, {model}",
        "",
        f"Command: `python benchmarks/layer_auc.py {' '.join(sys.argv[1:] if argv is None else argv)}`  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Items: {len(labels)}; AUC over the items "
        "with right and wrong candidates; difference = layer − "
        f"{args.against}, paired item-bootstrap 95% CI ({args.n_boot} resamples).",
        "",
        f"| layer | mean-norm AUC | {args.against} AUC | difference [95% CI] | p | items | pairs |",
        "|---:|---:|---:|---|---:|---:|---:|",
    ]
    for la in layers:
        j = used.index(la)
        res = paired_auc_bootstrap([m[:, j] for m in means], conf, labels, n_boot=args.n_boot)
        lines.append(
            f"| {la} | {res['auc_a']:.3f} | {res['auc_b']:.3f} | {res['diff']:+.3f} [{res['lo']:+.3f}, "
            f"{res['hi']:+.3f}] | {res['p']:.3f} | {res['items']} | {res['pairs']} |"
        )
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
