"""A tiny measured example of online pruning inside a vLLM server: tokens and wall time against the unpruned run.

Starts one vLLM server with the plugin (CPU build, the default model, bf16 as ``vllm:default``), runs a few
gsm_symbolic items with ``n`` candidates unpruned and then pruned (one rule), one item at a time, and writes
what each cost and whether the pruned run equals the replay of the unpruned one (``simulate``) to ``--out``.
Not the issue's 100-item measurement: a few items, to show the mechanism works and what it saves.

Usage:
    python docs/results/engine_pruning/measure.py --items 5 -n 8 --out docs/results/engine_pruning
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from collections import Counter
from pathlib import Path

from l2reason.backends.base import GenerationRequest, PruneSpec, SamplingParams
from l2reason.eval.datasets import load_dataset
from l2reason.eval.harness import DEFAULT_SYSTEM, item_messages
from l2reason.techniques.answers import extract_answer
from l2reason.techniques.pruning import simulate, token_signal

# the self-certainty rule the replay on the 100 published items chose on their even half
# (docs/results/gsm_symbolic_100_vllm/pruning/pruning_curves.md, section 1)
log = logging.getLogger("engine_pruning")
DATASET = load_dataset("gsm_symbolic:seed=42")
RULE = {"score": "self-certainty", "threshold": 13.84, "warmup": 64, "window": 32, "min_keep": 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=5)
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("-t", "--max-new-tokens", type=int, default=512)
    ap.add_argument("--rule", default=json.dumps(RULE), help="the PruneSpec, JSON")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from l2reason.backends.vllm import VLLMBackend

    spec = PruneSpec(**json.loads(args.rule))
    items = DATASET.items(args.items)
    t0 = time.perf_counter()
    be = VLLMBackend.launch("default", max_model_len=1024, max_num_seqs=16, eager=True)
    startup = time.perf_counter() - t0
    rows = []
    try:
        for i, item in enumerate(items):
            req = GenerationRequest(
                messages=item_messages(item, DEFAULT_SYSTEM),
                n=args.n,
                sampling=SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=i),
                logprobs=20,
            )
            runs = {}
            for name, r in (("unpruned", req), ("pruned", req.model_copy(update={"prune": spec}))):
                t = time.perf_counter()
                res = be.generate(r)
                runs[name] = (res, time.perf_counter() - t)
            full, pruned = runs["unpruned"][0], runs["pruned"][0]
            sim = simulate(
                spec, [token_signal(spec, self_certainty=c.logprobs.self_certainty) for c in full.candidates]
            )
            got = [c.prune["step"] if c.prune["pruned"] else -1 for c in pruned.candidates]
            rows.append(
                {
                    "item": item.id,
                    "tokens_unpruned": sum(c.completion_tokens for c in full.candidates),
                    "tokens_pruned": sum(c.completion_tokens for c in pruned.candidates),
                    "seconds_unpruned": round(runs["unpruned"][1], 2),
                    "seconds_pruned": round(runs["pruned"][1], 2),
                    "pruned": sum(s >= 0 for s in got),
                    "equals_replay": got == sim.pruned_step.tolist(),
                    "majority_unpruned_right": _majority(full.candidates, item),
                    "majority_pruned_right": _majority([c for c in pruned.candidates if not c.prune["pruned"]], item),
                }
            )
            log.info(json.dumps(rows[-1]))
    finally:
        be.close()
    _write(args, spec, rows, startup)


def _majority(cands: list, item) -> bool:
    """Whether the candidates' most common extracted answer is right (no answer: wrong)."""
    votes = Counter(a for a in (extract_answer(c.text) for c in cands) if a is not None)
    return bool(votes) and DATASET.score(votes.most_common(1)[0][0], item)


def _write(args: argparse.Namespace, spec: PruneSpec, rows: list[dict], startup: float) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    tok_u, tok_p = sum(r["tokens_unpruned"] for r in rows), sum(r["tokens_pruned"] for r in rows)
    sec_u, sec_p = sum(r["seconds_unpruned"] for r in rows), sum(r["seconds_pruned"] for r in rows)
    info = {
        "command": f"python docs/results/engine_pruning/measure.py --items {args.items} -n {args.n} "
        f"-t {args.max_new_tokens} --out {args.out}",
        "rule": spec.model_dump(mode="json"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
        "server_startup_s": round(startup, 1),
        "rows": rows,
    }
    (args.out / "measure.json").write_text(json.dumps(info, indent=2) + "\n")
    lines = [
        f"# Online pruning inside vLLM: {len(rows)} gsm_symbolic items x n={args.n}",
        "",
        f"Command: `{info['command']}`  ",
        f"Rule: `{json.dumps(RULE if spec == PruneSpec(**RULE) else spec.model_dump(mode='json'))}`  ",
        "Server: `vllm:default` (Qwen2.5-Coder-0.5B-Instruct, bf16, vLLM 0.32 CPU build, eager), "
        f"max_num_seqs 16; started in {startup:.0f} s.  ",
        "Sampling: T = 0.7, top-p 0.95, top-20 logprobs, one item at a time (its n candidates together).",
        "",
        "| item | tokens unpruned | tokens pruned | s unpruned | s pruned | pruned | equals replay | majority right "
        "(unpruned / pruned) |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['item']} | {r['tokens_unpruned']} | {r['tokens_pruned']} | {r['seconds_unpruned']} | "
            f"{r['seconds_pruned']} | {r['pruned']} | {r['equals_replay']} | {r['majority_unpruned_right']} / "
            f"{r['majority_pruned_right']} |"
        )
    lines += [
        f"| **all** | {tok_u} | {tok_p} ({100 * (1 - tok_p / max(tok_u, 1)):.0f}% fewer) | {sec_u:.0f} | "
        f"{sec_p:.0f} ({100 * (1 - sec_p / max(sec_u, 1e-9)):.0f}% less) | {sum(r['pruned'] for r in rows)} | "
        f"{sum(r['equals_replay'] for r in rows)}/{len(rows)} | {sum(r['majority_unpruned_right'] for r in rows)} / "
        f"{sum(r['majority_pruned_right'] for r in rows)} |",
        "",
        "Tokens count every generated token the client keeps (a pruned candidate's prefix included; the one or two "
        "tokens the engine generates past a prune step are not counted). Wall time is the client's, per item. "
        "Five items say nothing about accuracy; this shows the mechanism and its cost, not the savings at equal "
        "accuracy (that needs the 100-item run).",
    ]
    (args.out / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
