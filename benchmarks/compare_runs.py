"""Compare two evaluation reports of the same items, method by method (e.g. two engines' samples).

Reads each report's ``per_item.csv`` (written by ``l2reason report`` / ``l2reason eval``),
keeps the items and methods both have, and writes, per method, each side's accuracy with a
95% bootstrap CI and the item-paired difference (paired bootstrap CI, p-value, McNemar's
discordant counts). Two engines' samplers do not draw the same samples from the same seeds,
so "equal within sampling noise" is the claim this can support: a difference whose CI
includes 0.

Usage:
    python benchmarks/compare_runs.py A/per_item.csv B/per_item.csv --labels transformers,vLLM \
        --out docs/results/.../engines.md

Writes the Markdown table to ``--out`` (and the numbers to the same path with ``.json``). Not a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from l2reason.eval.stats import bootstrap_ci, mcnemar, paired_bootstrap  # noqa: E402

_NOT_METHODS = {"item_id", "index", "gold"}


def read_per_item(path: Path) -> tuple[list[str], dict[str, dict[str, bool]]]:
    """(item ids in file order, {method: {item_id: correct}}); empty cells (method not run on an item) skipped."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{path}: no rows")
    ids = [r["item_id"] for r in rows]
    out: dict[str, dict[str, bool]] = {}
    for m in rows[0]:
        if m in _NOT_METHODS:
            continue
        out[m] = {r["item_id"]: r[m] == "1" for r in rows if r.get(m, "") in ("0", "1")}
    return ids, out


def compare(a: dict[str, dict[str, bool]], b: dict[str, dict[str, bool]], n_boot: int) -> list[dict[str, object]]:
    """One row per method present on both sides, over the items both scored."""
    rows: list[dict[str, object]] = []
    for m in [m for m in a if m in b]:
        items = [i for i in a[m] if i in b[m]]
        if not items:
            continue
        xa = np.array([a[m][i] for i in items], dtype=float)
        xb = np.array([b[m][i] for i in items], dtype=float)
        _, alo, ahi = bootstrap_ci(xa, n_boot=n_boot)
        _, blo, bhi = bootstrap_ci(xb, n_boot=n_boot)
        d, lo, hi, p = paired_bootstrap(xb, xa, n_boot=n_boot)
        a_only, b_only, p_mc = mcnemar(xb, xa)  # (A=b wrong & B=a right, A=b right & B=a wrong)
        rows.append(
            {
                "method": m,
                "items": len(items),
                "a": float(xa.mean()),
                "a_ci": [alo, ahi],
                "b": float(xb.mean()),
                "b_ci": [blo, bhi],
                "b_minus_a": d,
                "ci": [lo, hi],
                "p": p,
                "b_only": b_only,
                "a_only": a_only,
                "mcnemar_p": p_mc,
            }
        )
    return rows


def to_markdown(rows: list[dict[str, object]], labels: tuple[str, str], command: str) -> str:
    la, lb = labels
    lines = [
        f"# {la} vs {lb}: accuracy per method on the same items",
        "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Accuracy % with 95% bootstrap CIs; the "
        f"difference is {lb} − {la}, paired by item (paired bootstrap CI and p; McNemar's discordant items).",
        "",
        f"| method | items | {la} % [95% CI] | {lb} % [95% CI] | {lb} − {la}, points [95% CI] | p | "
        f"only {lb} right / only {la} right |",
        "|---|---:|---|---|---|---:|---|",
    ]
    for r in rows:
        a_ci, b_ci, ci = r["a_ci"], r["b_ci"], r["ci"]
        assert isinstance(a_ci, list) and isinstance(b_ci, list) and isinstance(ci, list)
        lines.append(
            f"| {r['method']} | {r['items']} | {100 * float(r['a']):.1f} [{100 * a_ci[0]:.1f}, {100 * a_ci[1]:.1f}] | "
            f"{100 * float(r['b']):.1f} [{100 * b_ci[0]:.1f}, {100 * b_ci[1]:.1f}] | "
            f"{100 * float(r['b_minus_a']):+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}] | {float(r['p']):.3f} | "
            f"{r['b_only']} / {r['a_only']} |"
        )
    excl = [str(r["method"]) for r in rows if isinstance(r["ci"], list) and (r["ci"][0] > 0 or r["ci"][1] < 0)]
    lines += [
        "",
        f"Methods whose difference CI excludes 0: {', '.join(excl) if excl else 'none'} "
        f"(of {len(rows)}; with this many methods about one in 20 would by chance alone).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, help="per_item.csv of run A")
    ap.add_argument("b", type=Path, help="per_item.csv of run B (same dataset items)")
    ap.add_argument("--labels", default="A,B", help="the two runs' names, comma-separated")
    ap.add_argument("--out", type=Path, required=True, help="the Markdown file to write")
    ap.add_argument("--n-boot", type=int, default=10_000)
    args = ap.parse_args()
    labels = tuple(x.strip() for x in args.labels.split(","))
    if len(labels) != 2 or not all(labels):
        raise SystemExit("--labels needs two names, e.g. transformers,vLLM")
    ids_a, a = read_per_item(args.a)
    ids_b, b = read_per_item(args.b)
    if not set(ids_a) & set(ids_b):
        raise SystemExit(f"{args.a} and {args.b} share no item ids")
    rows = compare(a, b, args.n_boot)
    command = "python benchmarks/compare_runs.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_markdown(rows, (labels[0], labels[1]), command), encoding="utf-8")
    args.out.with_suffix(".json").write_text(
        json.dumps({"a": str(args.a), "b": str(args.b), "labels": labels, "rows": rows}, indent=1), encoding="utf-8"
    )
    print(f"wrote {args.out} ({len(rows)} methods)")


if __name__ == "__main__":
    main()
