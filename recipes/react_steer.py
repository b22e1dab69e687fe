"""A ReAct agent with a calculator tool, plain vs wrapped in L2Steer (ERSS).

Every step of the agent's loop is one LM call; inside ``L2Steer`` each of
them runs with Endogenous Reasoning State Steering. Prints each answer, how
many steering injections fired, and the accuracy of both agents.

    python recipes/react_steer.py                  # default model, 1 problem, 2 steps (17 min on 2 loaded CPU cores)
    python recipes/react_steer.py --model fast --problems 2

The defaults are a smoke run, not a comparison. The measured comparison (the
plain agent vs ``L2SelectBest`` / ``L2Steer`` / ``L2Recurse`` around it:
success with paired CIs, steps, invalid tool calls, format failures, tokens)
is ``docs/results/used_by_agent/README.md``, made by
``python benchmarks/agent_loop.py``.
"""

from __future__ import annotations

import argparse
import ast
import operator
import time

import dspy

import l2reason.dspy as l2
from l2reason.eval.datasets import load_dataset

_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
    ast.Pow: operator.pow,
}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as '(12 + 7) * 3'."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"unsupported expression: {expression!r}")

    try:
        v = ev(ast.parse(expression, mode="eval").body)
    except Exception as e:
        return f"error: {e}"
    return str(int(v)) if float(v).is_integer() else f"{v:.6g}"


#: the tool as the agent sees it: with a call written out, because a small model shown only DSPy's argument
#: schema copies the schema as the argument (docs/results/used_by_agent/README.md)
TOOL = dspy.Tool(
    calculator,
    desc="Evaluate an arithmetic expression and return its value. Call it with a JSON object whose "
    '"expression" is the expression as a string, e.g. {"expression": "(12 + 7) * 3"}.',
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--dataset", default="basic_arithmetic")
    ap.add_argument("--problems", type=int, default=1)
    ap.add_argument("--max-iters", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--beta", type=float, default=0.5)
    args = ap.parse_args()

    data = load_dataset(args.dataset)
    items = data.items(limit=args.problems)
    l2.configure_dspy(args.model, max_tokens=args.max_tokens, cache=False)
    sig = "question -> answer: str"
    plain = l2.L2Observe(dspy.ReAct(sig, tools=[TOOL], max_iters=args.max_iters))
    # warmup 8 and streak 8: answers here are short, far below the paper's defaults (W=32, S=40)
    steer = l2.L2Steer(
        dspy.ReAct(sig, tools=[TOOL], max_iters=args.max_iters),
        beta=args.beta,
        S=8,
        threshold={"warmup": 8},
    )
    acc = {"plain": 0, "steer": 0}
    secs = {"plain": 0.0, "steer": 0.0}
    for it in items:
        line = [f"gold={it.answer}"]
        for name, prog in (("plain", plain), ("steer", steer)):
            t0 = time.perf_counter()
            try:
                pred = prog(question=it.question)
                ans, rep = str(pred.answer), pred.l2
            except Exception as e:
                ans, rep = f"<{type(e).__name__}>", None
            secs[name] += time.perf_counter() - t0
            ok = data.score(ans, it)
            acc[name] += ok
            calls = len(rep.calls) if rep else 0
            line.append(
                f"{name}={ans[:14]!r} {'✓' if ok else '✗'} calls={calls}"
                + (f" report={rep.interventions[-1] if rep and rep.calls else {}}" if name == "steer" else "")
            )
        print(f"Q: {it.question[:80]}\n   " + " | ".join(line))
    n = len(items)
    print(f"\nmodel={args.model} problems={n} max_iters={args.max_iters} beta={args.beta}")
    print(f"ReAct:          {acc['plain']}/{n} ({secs['plain']:.0f}s)")
    print(f"L2Steer(ReAct): {acc['steer']}/{n} ({secs['steer']:.0f}s)")


if __name__ == "__main__":
    main()
