"""What each technique costs in decode speed on one machine.

Measures, on the same prompts and seeds:
- plain greedy decode tok/s (band norms captured) vs ALRR (K=1, adaptive τ;
  reports the fraction of active tokens and accepted passes) vs ERSS;
- LRS@8: 8 candidates in one batched call vs 8 sequential single-candidate
  calls for the same prompts and seeds (tokens/s of each, ratio).

Usage:
    python benchmarks/techniques_cost.py [--model default] [--max-new-tokens 96] [--warmup 16]

Writes ``docs/results/techniques_cost.md`` / ``.json``. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, report_head, run_info, write_report  # noqa: E402
from l2reason.backends.base import GenerationRequest, Message, NormSpec, SamplingParams, SelectionSpec  # noqa: E402
from l2reason.backends.hf import HFBackend  # noqa: E402
from l2reason.data import PROBLEMS, SYSTEM_PROMPT  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=16, help="adaptive-τ warm-up steps for ALRR/ERSS")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "techniques_cost"))
    args = ap.parse_args()
    be = HFBackend(args.model)
    prompts = [q for q, _ in PROBLEMS[: args.prompts]]

    def req(q: str, n: int = 1, temp: float = 0.0, seed: int = 0, **kw) -> GenerationRequest:
        return GenerationRequest(
            messages=[Message(role="system", content=SYSTEM_PROMPT), Message(role="user", content=q)],
            n=n,
            sampling=SamplingParams(max_new_tokens=args.max_new_tokens, temperature=temp, seed=seed),
            norms=NormSpec(layers="band"),
            **kw,
        )

    th = {"warmup": args.warmup}
    configs = {
        "plain": [],
        "alrr": [{"kind": "alrr", "threshold": th}],
        "erss": [{"kind": "erss", "threshold": th}],
    }
    be.generate(req(prompts[0]))  # warm-up
    rows = {}
    for name, iv in configs.items():
        tok = secs = 0.0
        active = steps = acc = tried = inj = 0
        for q in prompts:
            t = time.perf_counter()
            r = be.generate(req(q, interventions=iv))
            secs += time.perf_counter() - t
            c = r.candidates[0]
            tok += c.completion_tokens
            if "alrr" in c.interventions:
                a = c.interventions["alrr"]
                active += sum(a["active_tokens"])
                steps += a["decode_steps"] * len(a["layers"])
                acc += sum(a["passes_accepted"])
                tried += sum(a["passes_tried"])
            if "erss" in c.interventions:
                inj += len(c.interventions["erss"]["injections"])
        rows[name] = {
            "tokens": int(tok),
            "seconds": round(secs, 2),
            "tok_s": round(tok / secs, 3),
            **(
                {"active_frac": round(active / max(steps, 1), 4), "accepted": acc, "tried": tried}
                if name == "alrr"
                else {}
            ),
            **({"injections": inj} if name == "erss" else {}),
        }
    # LRS@8: one batched call vs 8 sequential calls with the same seeds (candidate j = seed (0, j))
    sel = SelectionSpec(method="l2")
    t = time.perf_counter()
    batched_tok = 0
    for q in prompts:
        batched_tok += be.generate(req(q, n=8, temp=0.7, selection=sel)).completion_tokens
    b_secs = time.perf_counter() - t
    from l2reason.backends.hf.backend import row_seed  # noqa: F401  (documents how seeds map)

    t = time.perf_counter()
    seq_tok = 0
    for q in prompts:
        for _j in range(8):
            # one candidate per call; different seeds give different samples (same budget of tokens)
            seq_tok += be.generate(req(q, n=1, temp=0.7, seed=_j)).completion_tokens
    s_secs = time.perf_counter() - t
    lrs = {
        "batched": {"tokens": batched_tok, "seconds": round(b_secs, 2), "tok_s": round(batched_tok / b_secs, 3)},
        "sequential": {"tokens": seq_tok, "seconds": round(s_secs, 2), "tok_s": round(seq_tok / s_secs, 3)},
    }
    lrs["speedup_per_token"] = round(lrs["batched"]["tok_s"] / lrs["sequential"]["tok_s"], 2)
    out = {
        **run_info(),
        "model": be.model_id,
        "max_new_tokens": args.max_new_tokens,
        "prompts": len(prompts),
        "decode": rows,
        "lrs8": lrs,
        "machine": machine(),
    }
    plain = rows["plain"]["tok_s"]
    lines = [
        *report_head("Technique costs", out),
        f"Date: {out['date']}; model {out['model']} (fp32); {len(prompts)} prompts; ≤{args.max_new_tokens} new tokens; "
        f"adaptive τ warm-up {args.warmup}.  ",
        f"Machine: {out['machine']}",
        "",
        "| method | tokens | seconds | tok/s | vs plain | notes |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        note = ""
        if name == "alrr":
            note = f"active {100 * r['active_frac']:.1f}% of token-layers; {r['accepted']}/{r['tried']} passes accepted"
        if name == "erss":
            note = f"{r['injections']} injections"
        lines.append(f"| {name} | {r['tokens']} | {r['seconds']} | {r['tok_s']} | {r['tok_s'] / plain:.2f}× | {note} |")
    lines += [
        "",
        "| LRS@8 | tokens | seconds | tok/s |",
        "|---|---|---|---|",
        f"| one batched call (n=8) | {lrs['batched']['tokens']} | {lrs['batched']['seconds']} | {lrs['batched']['tok_s']} |",
        f"| 8 sequential calls | {lrs['sequential']['tokens']} | {lrs['sequential']['seconds']} | {lrs['sequential']['tok_s']} |",
        "",
        f"Batched is **{lrs['speedup_per_token']}×** faster per token.",
        "",
    ]
    write_report(args.out, out, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
