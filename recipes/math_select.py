"""Grade-school math: ChainOfThought alone vs wrapped in L2SelectBest, side by side.

The same problems go to the plain program (greedy) and to
``L2SelectBest(program, n=N)`` (N sampled candidates per LM call, the one
with the best ℓ2 score kept). Prints each answer with its ℓ2 score, then the
accuracy of both and the time taken.

    python recipes/math_select.py                 # default model, 4 problems, n=4
    python recipes/math_select.py --model fast --problems 2 --n 2
"""

from __future__ import annotations

import argparse
import time

import dspy

import l2reason.dspy as l2
from l2reason.eval.datasets import load_dataset


class Solve(dspy.Signature):
    """Solve the math word problem. Give the final answer as a number only."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField(desc="a number")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="model spec: default | fast | a path")
    ap.add_argument("--dataset", default="basic_arithmetic", help="gsm_symbolic, basic_arithmetic, evals:<task>")
    ap.add_argument("--problems", type=int, default=4)
    ap.add_argument("--n", type=int, default=4, help="candidates per LM call")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--score", default="B/T")
    args = ap.parse_args()

    data = load_dataset(args.dataset)
    items = data.items(limit=args.problems)
    l2.configure_dspy(args.model, max_tokens=args.max_tokens, cache=False)

    plain = l2.L2Observe(dspy.ChainOfThought(Solve), score=args.score)
    best = l2.L2SelectBest(dspy.ChainOfThought(Solve), n=args.n, score=args.score)

    rows = []
    times = {"plain": 0.0, "select": 0.0}
    for it in items:
        out = {}
        for name, prog in (("plain", plain), ("select", best)):
            t0 = time.perf_counter()
            try:
                pred = prog(question=it.question)
                ans, score, parsed = str(pred.answer), pred.l2.score, pred.l2.parsed
            except Exception as e:  # a parse failure counts as wrong
                ans, score, parsed = f"<{type(e).__name__}>", None, None
            times[name] += time.perf_counter() - t0
            out[name] = (ans, score, data.score(ans, it), parsed)
        rows.append((it, out))
        p, s = out["plain"], out["select"]
        print(f"Q: {it.question[:90]}")
        print(f"   gold={it.answer:>8} | plain={p[0][:12]:>12} ({_f(p[1])}) {'✓' if p[2] else '✗'}", end="")
        print(f" | L2SelectBest(n={args.n})={s[0][:12]:>12} ({_f(s[1])}) {'✓' if s[2] else '✗'}", end="")
        print(" parsed=False (no candidate parsed)" if s[3] is False else "")

    n = len(rows)
    acc = {k: sum(o[k][2] for _, o in rows) for k in ("plain", "select")}
    print(f"\nmodel={args.model} dataset={args.dataset} problems={n} n={args.n} score={args.score}")
    print(f"plain ChainOfThought:        {acc['plain']}/{n}  ({times['plain']:.0f}s)")
    print(f"L2SelectBest(ChainOfThought): {acc['select']}/{n}  ({times['select']:.0f}s)")


def _f(x: float | None) -> str:
    return "ℓ2 —" if x is None else f"ℓ2 {x:.3f}"


if __name__ == "__main__":
    main()
