"""Decode tokens/s vs rows per forward (N candidates x items) for the evaluation harness.

The harness sends ``batch_items`` items of N candidates each to one
``generate_many`` call, so ``N x batch_items`` rows share a forward per step.
This measures generated tokens per second for each row count with the
harness's own request (temperature 0.7, every layer's norms, top-20 logprobs),
on gsm_symbolic questions. Rows that finish early leave the batch (KV
compaction), so the numbers reflect the harness's real throughput.

Usage:
    python benchmarks/eval_batch_size.py [--model default] [--rows 1,4,8,16,32] [--max-new-tokens 64]

Writes ``docs/results/eval_batch_size.md`` and ``.json``. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import hf_env, hf_report_head, run_config, write_report  # noqa: E402
from l2reason.backends.hf import HFBackend  # noqa: E402
from l2reason.eval.datasets import load_dataset  # noqa: E402
from l2reason.eval.harness import SAMPLES, item_request  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--rows", default="1,4,8,16,32")
    ap.add_argument("--n", type=int, default=4, help="candidates per item (rows = n x items)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "eval_batch_size"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    be = HFBackend(args.model)
    ds = load_dataset("gsm_symbolic:seed=42")
    rows = [int(x) for x in args.rows.split(",")]
    results = []
    warm = run_config(be, ds.name, n=1, max_new_tokens=4)
    be.generate_many([item_request(warm, ds.items(1)[0], 0, SAMPLES)])  # warm-up
    for r in rows:
        n = min(args.n, r)
        k = max(1, r // n)
        cfg = run_config(be, ds.name, n=n, max_new_tokens=args.max_new_tokens)
        reqs = [item_request(cfg, it, i, SAMPLES) for i, it in enumerate(ds.items(k))]
        t0 = time.perf_counter()
        res = be.generate_many(reqs)
        secs = time.perf_counter() - t0
        toks = sum(x.completion_tokens for x in res)
        steps = max(c.completion_tokens for x in res for c in x.candidates)
        results.append({"rows": n * k, "n": n, "items": k, "tokens": toks, "steps": steps, "seconds": secs})
        print(
            f"rows {n * k:3d} ({k} items x N={n}): {toks} tokens in {secs:.1f}s = {toks / secs:.1f} tok/s", flush=True
        )
    env = hf_env(be.model_id, args.threads)
    cmd = f"python benchmarks/eval_batch_size.py --rows {args.rows} --n {args.n} --max-new-tokens {args.max_new_tokens}"
    lines = [
        *hf_report_head("Evaluation harness: tokens/s vs rows per forward", f"{cmd} --threads {args.threads}", env),
        "| rows | items x N | tokens | decode steps | seconds | tokens/s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for x in results:
        lines.append(
            f"| {x['rows']} | {x['items']} x {x['n']} | {x['tokens']} | {x['steps']} | {x['seconds']:.1f} | "
            f"{x['tokens'] / x['seconds']:.1f} |"
        )
    md = write_report(args.out, {"env": env, "args": vars(args), "results": results}, [*lines, ""])
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
