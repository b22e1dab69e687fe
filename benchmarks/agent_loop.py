"""The l2reason modules inside an agent's tool loop: dspy.ReAct with a calculator, plain vs wrapped.

The question (issue 24): wrapping a ``dspy.ReAct`` agent (calculator tool) in
``L2SelectBest``, ``L2Steer`` or ``L2Recurse``, does task success, the number
of steps, tool-call validity or the token bill change against the plain agent?

Conditions, the same agent and items (every LM call of the loop runs the technique):

- ``plain``: ``L2Observe(ReAct)`` (greedy; only observes the norms).
- ``select``: ``L2SelectBest(ReAct, n=N)``: each step samples N candidates in one batch, best ``B/T`` kept.
- ``steer``: ``L2Steer(ReAct, beta, S=8, threshold={"warmup": 8})`` (ERSS; short outputs, so W and S as in
  ``recipes/react_steer.py``).
- ``recurse``: ``L2Recurse(ReAct)`` (ALRR, its defaults).

Per item and condition one JSONL line (``results.jsonl``, written as it
finishes; a re-run skips what is there): the answer and whether it is right,
the loop's steps, tool calls that failed (the calculator's ``error:`` or
ReAct's ``Execution error``), whether the loop ended on a step the adapter
could not parse (a format failure), LM calls, completion tokens (all
candidates), wall seconds. ``README.md`` is written from the lines every
condition has finished (paired bootstrap CIs and McNemar against ``plain``).

    python benchmarks/agent_loop.py --model vllm:default                    # starts a vLLM CPU server
    python benchmarks/agent_loop.py --model vllm://127.0.0.1:8731 --limit 3  # a smoke run on a running one
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes"))

from benchmarks.used_by_metric import (  # noqa: E402
    Sink,
    latest,
    paired_table,
    parallel,
    read_jsonl,
    save_run,
)

CONDITIONS = ("plain", "select", "steer", "recurse")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vllm:default")
    ap.add_argument("--dataset", default="gsm_symbolic:seed=42")
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--max-iters", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--n", type=int, default=4, help="candidates per step for select")
    ap.add_argument("--beta", type=float, default=0.5, help="ERSS strength for steer")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "used_by_agent"))
    ap.add_argument("--report", action="store_true", help="only write README.md from the stored lines")
    return ap.parse_args(argv)


def agents(args: argparse.Namespace) -> dict[str, Any]:
    """One ReAct agent per condition, each wrapped in its l2reason module."""
    import dspy
    from react_steer import calculator

    import l2reason.dspy as l2

    def react() -> Any:
        return dspy.ReAct("question -> answer: str", tools=[calculator], max_iters=args.max_iters)

    make = {
        "plain": lambda: l2.L2Observe(react()),
        "select": lambda: l2.L2SelectBest(react(), n=args.n),
        "steer": lambda: l2.L2Steer(react(), beta=args.beta, S=8, threshold={"warmup": 8}),
        "recurse": lambda: l2.L2Recurse(react()),
    }
    return {c: make[c]() for c in args.conditions.split(",") if c}


def trajectory_stats(traj: dict[str, Any], max_iters: int) -> dict[str, Any]:
    """Steps, failed tool calls and whether the loop ended on an unparsable step, from ReAct's trajectory.

    ReAct ends its loop early, without ``finish``, only when a step does not
    parse into ``next_thought`` / ``next_tool_name`` / ``next_tool_args``.

    Example:
        >>> t = {"tool_name_0": "calculator", "observation_0": "error: bad", "tool_name_1": "finish",
        ...      "observation_1": "Completed."}
        >>> trajectory_stats(t, 4)
        {'steps': 2, 'tool_calls': 1, 'invalid_tool_calls': 1, 'finished': True, 'format_fail_step': False, \
'first_invalid': 'error: bad'}
    """
    names = [traj[k] for k in traj if k.startswith("tool_name_")]
    obs = [str(traj[k]) for k in traj if k.startswith("observation_")]
    tools = [(n, o) for n, o in zip(names, obs, strict=False) if n != "finish"]
    invalid = [o for _, o in tools if o.startswith(("error:", "Execution error"))]
    bad = len(invalid)
    finished = bool(names) and names[-1] == "finish"
    return {
        "steps": len(names),
        "tool_calls": len(tools),
        "invalid_tool_calls": bad,
        "finished": finished,
        "format_fail_step": not finished and len(names) < max_iters,
        "first_invalid": invalid[0][:160] if invalid else None,
    }


def run_agent(agent: Any, data: Any, item: Any, max_iters: int) -> dict[str, Any]:
    """One agent on one item: answer, success, trajectory stats, LM calls, tokens, seconds."""
    from l2reason.dspy.modules import _collect

    t0 = time.perf_counter()
    err = None
    with _collect() as sink:  # every LM call's summary, also those of a run that raises
        try:
            pred = agent(question=item.question)
            answer, traj = str(pred.answer), dict(pred.trajectory)
        except Exception as e:  # the final extract step did not parse (or the loop raised)
            answer, traj, err = "", {}, f"{type(e).__name__}: {str(e)[:160]}"
    calls = sink.summaries()
    return {
        "item": item.id,
        "gold": item.answer,
        "answer": answer,
        "correct": bool(data.score(answer, item)) if err is None else False,
        "error": err,
        **trajectory_stats(traj, max_iters),
        "lm_calls": len(calls),
        "tokens": sum(int(c.get("completion_tokens") or 0) for call in calls for c in call.get("candidates", [])),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def summary_table(rows: list[dict[str, Any]], conds: list[str], items: set[str]) -> list[str]:
    """Per condition: steps, tool calls, invalid ones, format failures, LM calls, tokens and seconds per item."""
    import numpy as np

    lines = [
        "| condition | mean steps | tool calls | invalid tool calls | loop ended early, no finish "
        "| run raised (a reply did not parse) | LM calls/item | tokens/item | s/item |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in conds:
        rs = [r for r in rows if r["condition"] == c and r["item"] in items]
        n = len(rs)

        def mean(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return float(np.mean([float(r[key]) for r in rs])) if rs else float("nan")

        tool_calls = sum(r["tool_calls"] for r in rs)
        lines.append(
            f"| {c} | {mean('steps'):.2f} | {tool_calls} | {sum(r['invalid_tool_calls'] for r in rs)}/{tool_calls} | "
            f"{sum(r['format_fail_step'] for r in rs)}/{n} | {sum(r['error'] is not None for r in rs)}/{n} | "
            f"{mean('lm_calls'):.1f} | {mean('tokens'):.0f} | {mean('seconds'):.0f} |"
        )
    return lines


def write_readme(out: Path) -> str:
    """``README.md`` from the stored lines (items every condition has finished)."""
    run = json.loads((out / "run.json").read_text())
    st = run["settings"]
    rows = latest(read_jsonl(out / "results.jsonl"))
    conds = [c for c in CONDITIONS if any(r["condition"] == c for r in rows)]
    by = {c: {r["item"]: bool(r["correct"]) for r in rows if r["condition"] == c} for c in conds}
    items = sorted(
        set.intersection(*(set(v) for v in by.values())) if by else set(), key=lambda i: int(i.split(":")[-1])
    )
    status = "complete" if len(items) >= st["limit"] else f"**partial**: {len(items)} of {st['limit']} items"
    lines = [
        "# The l2reason modules inside a ReAct tool loop (calculator)",
        "",
        f"Status: {status}. Written by `benchmarks/agent_loop.py`.",
        "",
        f'Agent `dspy.ReAct("question -> answer: str", tools=[calculator], max_iters={st["max_iters"]})`; '
        f"data `{st['dataset']}` items {st['offset']}–{st['offset'] + st['limit'] - 1}; model `{st['model']}`, "
        f"greedy except `select` (n={st['n']}), at most {st['max_tokens']} new tokens per step; steer beta "
        f"{st['beta']}; ChatAdapter without the JSON fallback.",
        "",
        "Commands: " + "; ".join(f"`{c['command']}` ({c['date']})" for c in run["commands"]),
        "",
        *([f"Server: {run['server']}", ""] if run.get("server") else []),
        f"Machine: {run.get('cpu', '?')}. {run.get('versions', '')}",
        "",
        *([(out / "discussion.md").read_text().strip(), ""] if (out / "discussion.md").exists() else []),
        "## Success",
        "",
        *paired_table(by, conds, items, [(c, "plain") for c in conds if c != "plain"]),
        "",
        "## Steps, tool calls, format and cost",
        "",
        *summary_table(rows, conds, set(items)),
        "",
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return f"wrote {out / 'README.md'} ({len(items)} items in every condition)"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        import dspy

        import l2reason.dspy as l2
        from l2reason.eval.datasets import load_dataset

        save_run(args, out)
        data = load_dataset(args.dataset)
        items = data.items(limit=args.limit, offset=args.offset)
        l2.configure_dspy(args.model, max_tokens=args.max_tokens, cache=False)
        dspy.configure(adapter=dspy.ChatAdapter(use_json_adapter_fallback=False))
        progs = agents(args)
        sink = Sink(out / "results.jsonl")
        done = {(r["condition"], r["item"]) for r in read_jsonl(sink.path)}
        jobs = [(c, it) for it in items for c in progs if (c, it.id) not in done]

        def job(j: tuple[str, Any]) -> None:
            sink.write({"condition": j[0], **run_agent(progs[j[0]], data, j[1], args.max_iters)})

        parallel(job, jobs, args.threads, "agent items")
    print(write_readme(out))


if __name__ == "__main__":
    main()
