"""``l2reason eval`` on the same items with the transformers backend and with vLLM (CPU build): time and accuracy.

Runs the two commands one after the other (same dataset slice, N, sampling
settings, seeds), each into its own run folder, and writes a comparison:
wall time of the whole command (vLLM's start-up included and also reported
apart), sampled tokens per second, and every method's accuracy with its CI.
The engines' samplers differ, so the same seeds do not give the same samples:
accuracy columns agree only within sampling noise.

Usage:
    python benchmarks/vllm_eval.py [--limit 8] [--n 8] [--max-new-tokens 256] [--vllm-batch-items 4]

Writes ``docs/results/vllm_eval/vllm_eval.md`` (and ``.json``). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import cpu_model, report_head, run_info, write_report  # noqa: E402


def run(label: str, model: str, args: argparse.Namespace, batch_items: int, runs: Path) -> dict:
    run_dir = runs / label
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cmd = [
        str(ROOT / ".venv" / "bin" / "l2reason"),
        "eval",
        "--dataset",
        args.dataset,
        "--limit",
        str(args.limit),
        "--n",
        str(args.n),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--model",
        model,
        "--batch-items",
        str(batch_items),
        "--out",
        str(run_dir),
    ]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    rep = json.loads((run_dir / "report" / "report.json").read_text())
    methods = {m["name"]: {k: m.get(k) for k in ("acc", "lo", "hi", "seconds", "tokens")} for m in rep["methods"]}
    # the report gives per-item means: oracle@N's tokens are all N samples' tokens, its seconds the sampling time
    oracle = methods[f"oracle@{args.n}"]
    items = rep["n_items"]
    sampled_seconds = oracle["seconds"] * items
    tokens = round(oracle["tokens"] * items)
    return {
        "command": " ".join(cmd[1:]),
        "wall_seconds": round(wall, 1),
        "sampling_seconds": sampled_seconds,
        "sampled_tokens": tokens,
        "methods": methods,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="gsm_symbolic:seed=42")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--hf-batch-items", type=int, default=2)
    ap.add_argument("--vllm-batch-items", type=int, default=4)
    ap.add_argument("--only-vllm", action="store_true", help="reuse the transformers run stored in --out's .json")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "vllm_eval" / "vllm_eval"))
    args = ap.parse_args()
    runs = ROOT / "out" / "bench-vllm-eval"
    res: dict = {
        **run_info(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "dataset": args.dataset,
        "limit": args.limit,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
    }
    if args.only_vllm:  # keep the transformers run of an earlier invocation
        res["transformers"] = json.loads(Path(args.out).with_suffix(".json").read_text())["transformers"]
    else:
        res["transformers"] = run("transformers", "default", args, args.hf_batch_items, runs)
    write(args, res)
    t = time.perf_counter()
    res["vllm"] = run("vllm", "vllm:default", args, args.vllm_batch_items, runs)
    res["vllm"]["note"] = (
        f"wall time includes starting the vLLM server (measured {time.perf_counter() - t:.0f} s in all)"
    )
    write(args, res)


def write(args: argparse.Namespace, res: dict) -> None:
    lines = [
        *report_head("`l2reason eval`: transformers backend vs vLLM (CPU build)", res),
        f"Date: {res['date']}; {res['dataset']}, {res['limit']} items x N={res['n']}, max {res['max_new_tokens']} "
        "new tokens, default model (Qwen2.5-Coder-0.5B-Instruct).  ",
        f"Machine: {res['cpu']}, {res['cores']} cores **shared** with a background evaluation (niced) and another "
        "engineer's jobs while this ran; the two runs are sequential, not interleaved, so the ratio carries that "
        "noise.",
        "",
        "| backend | command | wall s (all) | sampling s (from the run) | sampled tokens | tokens / sampling s |",
        "|---|---|---|---|---|---|",
    ]
    for k in ("transformers", "vllm"):
        r = res.get(k)
        if r:
            ss = r["sampling_seconds"] or float("nan")
            lines.append(
                f"| {k} | `{r['command']}` | {r['wall_seconds']} | {ss:.0f} | {r['sampled_tokens']} | "
                f"{r['sampled_tokens'] / ss:.1f} |"
            )
    if res.get("transformers") and res.get("vllm"):
        a, b = res["transformers"], res["vllm"]
        lines += [
            "",
            f"vLLM / transformers: wall {a['wall_seconds'] / b['wall_seconds']:.2f}x faster (vLLM start-up "
            f"included), sampling tokens/s {(b['sampled_tokens'] / b['sampling_seconds']) / (a['sampled_tokens'] / a['sampling_seconds']):.2f}x.",
            "",
            "Accuracy (95% CI) per method. The engines' samplers differ: the same seeds do not give the same "
            "samples, so the columns agree only within sampling noise.",
            "",
            "| method | transformers | vLLM |",
            "|---|---|---|",
        ]
        for m in a["methods"]:
            x, y = a["methods"][m], b["methods"].get(m)
            fmt = lambda v: f"{v['acc']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]" if v and v.get("acc") is not None else "-"  # noqa: E731
            lines.append(f"| {m} | {fmt(x)} | {fmt(y)} |")
    lines += ["", "Full reports: `out/bench-vllm-eval/<backend>/report/` when run; numbers in the `.json` here.", ""]
    write_report(args.out, res, lines)


if __name__ == "__main__":
    main()
