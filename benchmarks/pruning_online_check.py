"""Confirm one pruning operating point with a real online run on a stored run's items.

Generates the run's first items again with the same requests as its selection
pass (messages, sampling, seeds, batches of the run's `batch_items`) plus
`prune=PruneSpec(...)`, and compares every candidate with the offline replay
(`l2reason.eval.pruning.simulate_item`) of the stored samples: token counts,
pruned steps, that pruned texts are prefixes of the stored ones and survivors'
texts equal them, and the survivors' majority answer. A difference can only
come from floating-point noise (a pruned batch has other shapes than the
stored one, which can flip a near-tie token or a score within rounding of the
threshold); the output lists each one.

Usage:
    python benchmarks/pruning_online_check.py RUN --spec '{"score": "confidence", "threshold": 9.9, ...}' \
        --items 16 --out OUT_DIR [--threads 2]

Writes OUT_DIR/pruning_online_check.md and .json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import cpu_model  # noqa: E402
from benchmarks.pruning_curves import versions  # noqa: E402
from l2reason.backends.base import PruneSpec  # noqa: E402
from l2reason.eval.harness import load_run  # noqa: E402
from l2reason.eval.pruning import online_check  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="an evaluation run folder")
    ap.add_argument("--spec", required=True, help="PruneSpec fields as JSON")
    ap.add_argument("--items", type=int, default=16, help="the run's first N items")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-items", type=int, default=0, help="items per call (0 = the run's, as it was sampled)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from l2reason.backends.hf import HFBackend

    run = load_run(args.run)
    spec = PruneSpec.model_validate(json.loads(args.spec))
    be = HFBackend(run.config.model)
    if be.model_id != run.config.model_id:
        sys.exit(f"the run was sampled with {run.config.model_id}, the backend loaded {be.model_id}")
    res = online_check(be, run, spec, limit=args.items, batch_items=args.batch_items or None)
    res["meta"] = {
        "command": " ".join(["python", "benchmarks/pruning_online_check.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "versions": {**versions(), "torch": torch.__version__, "platform": platform.platform()},
        "run": str(args.run),
        "model_id": run.config.model_id,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pruning_online_check.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    m = res["meta"]
    lines = [
        f"# Online pruning vs its replay on stored samples ({res['items']} items)",
        "",
        f"Command: `{m['command']}`  ",
        f"Date: {m['date']}; CPU: {m['cpu']}, {m['threads']} torch threads; "
        f"{', '.join(f'{k} {v}' for k, v in m['versions'].items())}.  ",
        f"Rule: `{json.dumps(res['spec'])}`",
        "",
        "| what | value |",
        "|---|---|",
        f"| candidates with the replayed token count | {res['same_tokens']} / {res['candidates']} |",
        f"| candidates with the replayed pruning decision (step) | {res['same_pruned']} / {res['candidates']} |",
        f"| survivors equal to / pruned rows a prefix of the stored text | {res['prefix_ok']} / {res['candidates']} |",
        f"| items with the replayed majority answer | {res['same_vote']} / {res['items']} |",
        f"| tokens: stored (no pruning) / replayed / online | {res['stored_tokens']} / {res['replay_tokens']} / "
        f"{res['online_tokens']} |",
        f"| seconds: stored run's share / online with pruning | {res['stored_seconds']:.0f} / {res['seconds']:.0f} |",
        "",
    ]
    diffs = [
        r
        for r in res["rows"]
        if r["online_tokens"] != r["replay_tokens"] or not all(r["prefix_ok"]) or r["online_vote"] != r["replay_vote"]
    ]
    if diffs:
        lines += ["Items that differ:", ""]
        for r in diffs:
            lines.append(
                f"- {r['item_id']}: tokens online {r['online_tokens']} vs replay {r['replay_tokens']}; pruned at "
                f"{r['online_pruned_step']} vs {r['replay_pruned_step']}; threshold {r['online_threshold']} vs "
                f"{r['replay_threshold']}; prefix/equal {r['prefix_ok']}; vote {r['online_vote']!r} vs "
                f"{r['replay_vote']!r}"
            )
    else:
        lines.append("Every candidate matched its replay.")
    (out / "pruning_online_check.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
