"""Decode tokens/s with ℓ2 norm capture on vs off (same prompts, seeds, interleaved runs).

Usage:
    python benchmarks/capture_overhead.py [--model default] [--rounds 5] [--max-new-tokens 64] [--n 1]

Writes ``docs/results/capture_overhead.md`` (and ``.json``) with the machine,
versions and command. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import PROMPTS, machine, report_head, run_info, write_report  # noqa: E402
from l2reason.backends.base import GenerationRequest, Message, NormSpec, SamplingParams  # noqa: E402
from l2reason.backends.hf import HFBackend  # noqa: E402

WORD_PROBLEMS = PROMPTS[:2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "capture_overhead"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    be = HFBackend(args.model)
    load_s = time.perf_counter() - t0
    modes = {"off": None, "band": NormSpec(layers="band"), "all": NormSpec(layers="all")}

    def run(norms: NormSpec | None, prompt: str) -> tuple[int, float]:
        # a fixed token count (stop strings off, EOS can still end early: we count real tokens)
        req = GenerationRequest(
            messages=[Message(role="user", content=prompt)],
            n=args.n,
            sampling=SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0),
            norms=norms,
        )
        t = time.perf_counter()
        res = be.generate(req)
        return res.completion_tokens, time.perf_counter() - t

    run(None, WORD_PROBLEMS[0])  # warm-up
    rates: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.rounds):
        order = list(modes) if r % 2 == 0 else list(reversed(modes))  # interleave, alternate order
        for m in order:
            for p in WORD_PROBLEMS:
                tok, s = run(modes[m], p)
                rates[m].append(tok / s)
    med = {m: statistics.median(v) for m, v in rates.items()}
    out = {
        **run_info(),
        "model": be.model_id,
        "load_seconds": round(load_s, 2),
        "rounds": args.rounds,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "median_tok_s": {m: round(v, 3) for m, v in med.items()},
        "overhead_vs_off": {m: round(1 - med[m] / med["off"], 4) for m in modes if m != "off"},
        "all_tok_s": {m: [round(x, 3) for x in v] for m, v in rates.items()},
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "machine": machine(),
    }
    lines = report_head(
        "Norm-capture overhead",
        out,
        f"Date: {out['date']}; model {out['model']} (fp32); n={args.n} candidates; {args.max_new_tokens} new tokens; "
        f"{args.rounds} interleaved rounds x {len(WORD_PROBLEMS)} prompts.  ",
        f"Machine: {out['machine']}",
        "",
        "| capture | median decode tok/s | overhead vs off |",
        "|---|---|---|",
    )
    for m in modes:
        ov = "-" if m == "off" else f"{100 * out['overhead_vs_off'][m]:+.1f}%"
        lines.append(f"| {m} | {med[m]:.2f} | {ov} |")
    lines += ["", f"Peak RSS {out['peak_rss_gb']} GB; model load {out['load_seconds']} s.", ""]
    write_report(args.out, out, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
