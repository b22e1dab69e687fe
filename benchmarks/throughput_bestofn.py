"""LRS@8 in one batched call vs best-of-8 as 8 sequential calls (and dspy.BestOfN if it runs).

Same prompts, same sampling (T = 0.7), same token limit. "Batched" is one
``generate`` call with ``n=8`` and an ℓ2 ``SelectionSpec`` (selection inside the
call). "Sequential" is what a generic best-of-N wrapper does: 8 calls with
``n=1`` and the pick afterwards (here the same ℓ2 rule via ``select_result`` on
the merged candidates, standing in for an external reward). With
``--dspy``, ``dspy.BestOfN(N=8)`` over ``l2reason.dspy.l2_lm`` with an external
reward (the output holds a number) is timed too, when that integration imports.
Samples differ between modes (different seeds per call), so compare tokens/s,
and wall time only alongside the token counts.

Usage:
    python benchmarks/throughput_bestofn.py [--model default] [--prompts 2] [--max-new-tokens 128] [--dspy]

Writes ``docs/results/throughput_bestofn.md`` and ``.json``. Not a test.
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
from l2reason.backends.base import GenerationRequest, GenerationResult, SelectionSpec  # noqa: E402
from l2reason.backends.hf import HFBackend  # noqa: E402
from l2reason.eval.datasets import load_dataset  # noqa: E402
from l2reason.eval.harness import SAMPLES, item_request  # noqa: E402
from l2reason.select import select_result  # noqa: E402

N = 8


def batched(be: HFBackend, req: GenerationRequest) -> tuple[int, float]:
    t0 = time.perf_counter()
    res = be.generate(req.model_copy(update={"n": N, "selection": SelectionSpec(method="l2")}))
    return res.completion_tokens, time.perf_counter() - t0


def sequential(be: HFBackend, req: GenerationRequest) -> tuple[int, float]:
    t0 = time.perf_counter()
    cands = []
    for j in range(N):
        s = req.sampling.model_copy(update={"seed": req.sampling.seed * 1000 + j})
        r = be.generate(req.model_copy(update={"n": 1, "sampling": s}))
        c = r.candidates[0]
        c.index = j
        cands.append(c)
    merged = GenerationResult(model_id=be.model_id, backend=be.name, candidates=cands)
    select_result(merged, "l2", num_layers=be.num_layers)
    return merged.completion_tokens, time.perf_counter() - t0


def dspy_bestofn(be: HFBackend, question: str, max_new: int) -> tuple[int, float, int] | str:
    try:
        import dspy

        from l2reason.dspy import l2_lm
    except Exception as e:  # the DSPy integration is optional / may be in progress
        return f"skipped: {type(e).__name__}: {e}"
    from l2reason.eval.answers import extract_answer

    lm = l2_lm(backend=be, temperature=0.7, max_tokens=max_new, cache=False)
    module = dspy.BestOfN(
        module=dspy.Predict("question -> answer"),
        N=N,
        reward_fn=lambda args, pred: float(extract_answer(str(pred.answer)) is not None),
        threshold=2.0,  # above the maximal reward: all N attempts run, as in LRS@N
    )
    from dspy.clients.base_lm import GLOBAL_HISTORY

    start = len(GLOBAL_HISTORY)
    t0 = time.perf_counter()
    with dspy.context(lm=lm):
        try:
            module(question=question)
        except Exception as e:  # every attempt failed to parse: the tokens were still generated and timed
            print(f"dspy.BestOfN raised {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
    secs = time.perf_counter() - t0
    # BestOfN calls copies of the LM (one per rollout id, at temperature 1.0), so
    # their calls land in DSPy's global history, not in `lm.history`.
    toks = 0
    for h in GLOBAL_HISTORY[start:]:
        usage = h.get("usage") or {}
        toks += int(usage.get("completion_tokens", 0) or 0)
    return toks, secs, len(GLOBAL_HISTORY) - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dspy", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "throughput_bestofn"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    be = HFBackend(args.model)
    ds = load_dataset("gsm_symbolic:seed=42")
    cfg = run_config(be, ds.name, n=1, max_new_tokens=args.max_new_tokens, logprobs=0)
    items = ds.items(args.prompts)
    be.generate(item_request(cfg.model_copy(update={"max_new_tokens": 4}), items[0], 0, SAMPLES))  # warm-up
    rows: dict[str, list[tuple[int, float]]] = {"batched (n=8, one call)": [], "sequential (8 calls)": []}
    notes = []
    calls: list[int] = []
    if args.dspy:
        notes.append(
            "dspy.BestOfN runs each attempt at temperature 1.0 (its own setting) with DSPy's adapter prompt around "
            "the question, and stops each at max tokens too; prompts and lengths differ from LRS@8, so compare "
            "tokens/s, and wall time only with the token counts beside it"
        )
    for i, it in enumerate(items):
        req = item_request(cfg, it, i, SAMPLES)
        rows["batched (n=8, one call)"].append(batched(be, req))
        rows["sequential (8 calls)"].append(sequential(be, req))
        if args.dspy:
            r = dspy_bestofn(be, it.question, args.max_new_tokens)
            if isinstance(r, str):
                notes.append(f"dspy.BestOfN {r}")
            else:
                rows.setdefault("dspy.BestOfN(N=8)", []).append(r[:2])
                calls.append(r[2])
        print(f"prompt {i}: " + ", ".join(f"{k}: {v[-1][0]} tok {v[-1][1]:.1f}s" for k, v in rows.items() if v))
    summary = {k: {"tokens": sum(t for t, _ in v), "seconds": sum(s for _, s in v)} for k, v in rows.items() if v}
    base = summary["sequential (8 calls)"]
    env = hf_env(be.model_id, args.threads)
    cmd = (
        f"python benchmarks/throughput_bestofn.py --model {args.model} --prompts {args.prompts} "
        f"--max-new-tokens {args.max_new_tokens} --threads {args.threads}{' --dspy' if args.dspy else ''}"
    )
    lines = [
        *hf_report_head("LRS@8: one batched call vs best-of-8 as sequential calls", cmd, env),
        "| mode | tokens | seconds | tokens/s | tokens/s vs sequential |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, v in summary.items():
        tps = v["tokens"] / v["seconds"]
        ratio = tps / (base["tokens"] / base["seconds"])
        lines.append(f"| {k} | {v['tokens']} | {v['seconds']:.1f} | {tps:.1f} | {ratio:.2f}x |")
    if calls:
        notes.append(
            f"dspy.BestOfN made {sum(calls)} LM calls for {len(calls)} prompt(s) x N={N}: DSPy retries a call "
            "with its JSON adapter when the chat-format reply does not parse"
        )
    lines += [f"\n- {n}" for n in dict.fromkeys(notes)]
    write_report(args.out, {"env": env, "args": vars(args), "summary": summary}, [*lines, ""])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
