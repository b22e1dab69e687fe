"""Set two evaluation reports of the same items side by side (e.g. two model sizes): does a signal grow?

Reads each run's ``report.json`` (written by ``l2reason eval`` / ``l2reason report``) and writes one
Markdown file with, for each report: every method's accuracy and its paired difference from majority
vote (the report's own CIs, computed within that run), every score's within-item AUC (right vs wrong
candidates of the same item), and the learned probe's gain from the ℓ2 features (all features minus
confidence + base features). The two runs' differences are not paired with each other here (different
models give different samples); read a change between the columns against both CIs. For the item-paired
accuracy difference between the runs use ``benchmarks/compare_runs.py``.

Usage:
    python benchmarks/compare_models.py A/report.json B/report.json --labels 0.5B,1.5B --out sizes.md

Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _delta(d: dict[str, Any] | None) -> str:
    if not d:
        return "–"
    star = " **" if d["lo"] > 0 or d["hi"] < 0 else ""
    return f"{_pts(d['diff'])} [{_pts(d['lo'])}, {_pts(d['hi'])}]{star}"


def _acc(m: dict[str, Any]) -> str:
    return f"{100 * m['acc']:.1f} [{100 * m['lo']:.1f}, {100 * m['hi']:.1f}]"


def load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (a run folder's report/report.json)")
    rep = json.loads(path.read_text())
    for key in ("config", "methods", "signals"):
        if key not in rep:
            raise SystemExit(f"error: {path} has no {key!r}: not an l2reason evaluation report")
    return rep


def compare(reports: list[dict[str, Any]], labels: list[str], sources: list[str]) -> str:
    a, b = reports
    ids = [r["config"]["model_id"] for r in reports]
    lines = [
        f"# {labels[0]} vs {labels[1]}: two evaluation reports side by side",
        "",
        f"- {labels[0]}: `{sources[0]}` — {ids[0]}, {a['config']['num_layers']} layers, band {a.get('band')}",
        f"- {labels[1]}: `{sources[1]}` — {ids[1]}, {b['config']['num_layers']} layers, band {b.get('band')}",
        f"- dataset {a['config']['dataset']} vs {b['config']['dataset']} (items hashed: {a['config'].get('items_sha256', '?')[:12]} vs "
        f"{b['config'].get('items_sha256', '?')[:12]}), N = {a['config']['n']} vs {b['config']['n']}, "
        f"max new tokens {a['config']['max_new_tokens']} vs {b['config']['max_new_tokens']}",
        f"- written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        f"`python benchmarks/compare_models.py {' '.join(sys.argv[1:])}`",
        "",
        "## Accuracy, and the difference from majority vote within each run",
        "",
        "Accuracy % [95% bootstrap CI]; Δ = method − majority@N in points on that run's items, paired bootstrap "
        "95% CI (** = excludes 0).",
        "",
        f"| method | {labels[0]} accuracy | {labels[0]} Δ vs majority | {labels[1]} accuracy | "
        f"{labels[1]} Δ vs majority |",
        "|---|---|---|---|---|",
    ]
    ma = {m["name"]: m for m in a["methods"]}
    mb = {m["name"]: m for m in b["methods"]}
    for name in [m["name"] for m in a["methods"] if m["name"] in mb]:
        x, y = ma[name], mb[name]
        lines.append(
            f"| {name} | {_acc(x)} | {_delta(x.get('vs_majority'))} | {_acc(y)} | {_delta(y.get('vs_majority'))} |"
        )
    lines += [
        "",
        "## Which scores separate right from wrong candidates of the same item",
        "",
        "Within-item AUC = P(a right candidate outscores a wrong one of the same item); 0.5 = no signal.",
        "",
        f"| score | {labels[0]} within-item AUC | {labels[1]} within-item AUC | change |",
        "|---|---:|---:|---:|",
    ]
    sa = {s["score"]: s for s in a["signals"]}
    sb = {s["score"]: s for s in b["signals"]}
    for score in [s["score"] for s in a["signals"] if s["score"] in sb]:
        x, y = sa[score]["within_auc"], sb[score]["within_auc"]
        if x is None or y is None:
            continue
        lines.append(f"| {score} | {x:.3f} | {y:.3f} | {y - x:+.3f} |")
    pairs = f"{sa[next(iter(sa))]['pairs']} vs {sb[next(iter(sb))]['pairs']}" if sa and sb else "?"
    lines += ["", f"(right/wrong pairs: {pairs}.)", ""]
    pa, pb = a.get("probe") or {}, b.get("probe") or {}
    if pa and pb:
        lines += [
            "## Do the ℓ2 features add to confidence? (the probe with all features − with confidence + base only)",
            "",
            "| | " + " | ".join(labels) + " |",
            "|---|---|---|",
        ]
        for key, what in (("accuracy", "accuracy, points"), ("auc", "within-item AUC")):
            cells = []
            for p in (pa, pb):
                d = p.get(key)
                if not d:
                    cells.append("–")
                elif key == "auc":
                    cells.append(
                        f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] (p = {d['p']:.3f}; {d['items']} items, "
                        f"{d['pairs']} pairs)"
                    )
                else:
                    cells.append(f"{_delta(d)} (p = {d['p_boot']:.3f}; +{d['wins']}/−{d['losses']}; n = {d['n']})")
            lines.append(f"| {what} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--labels", default="A,B", help="two labels, comma-separated")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    labels = [x.strip() for x in args.labels.split(",")]
    if len(labels) != 2:
        raise SystemExit(f"error: --labels needs two comma-separated labels, got {args.labels!r}")
    reports = [load(args.a), load(args.b)]
    text = compare(reports, labels, [str(args.a), str(args.b)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
