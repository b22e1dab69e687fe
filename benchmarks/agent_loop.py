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

The calculator is shown to the model with an example call (``--tool example``,
the default). With DSPy's own rendering of a plain function (``--tool dspy``:
its docstring, then ``It takes arguments {'expression': {'type': 'string'}}``)
the packaged 0.5B model copies the argument's JSON schema as the value
(``next_tool_args = {"expression": {"type": "string"}}``), which DSPy's
argument check refuses: the failure of every call reproduced from the first
run's 130 of 130 failed tool calls (``docs/results/used_by_agent/before_fix/``).

Per item and condition one JSONL line (``results.jsonl``, written as it
finishes; a re-run skips what is there): the answer and whether it is right,
the loop's steps, tool calls that failed (the calculator's ``error:`` or
ReAct's ``Execution error``), whether the loop ended on a step the adapter
could not parse (a format failure), LM calls, completion tokens (all
candidates), wall seconds. ``README.md`` is written from the lines every
condition has finished (paired bootstrap CIs and McNemar against ``plain``).
``--minutes`` stops starting items after that long (a re-run goes on).
``--langchain K`` then runs the same four conditions on the first ``K`` items
as a LangChain ``create_agent`` loop over ``ChatL2Reason`` (``langchain.jsonl``,
a section of the same README).

    python benchmarks/agent_loop.py --model vllm:default     # starts a vLLM CPU server; out: used_by_agent/vllm_0.5b
    python benchmarks/agent_loop.py --model vllm://127.0.0.1:8731 --limit 3  # a smoke run on a running one
    python benchmarks/agent_loop.py --model default --out docs/results/used_by_agent/embedded  # transformers
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

#: ``--tool example``: the calculator's description as the agent sees it, with a call written out
TOOL_DESC = (
    "Evaluate an arithmetic expression and return its value. Call it with next_tool_args set to a JSON object "
    'whose "expression" is the expression as a string, e.g. {"expression": "(12 + 7) * 3"}.'
)


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
    ap.add_argument(
        "--tool",
        choices=("example", "dspy"),
        default="example",
        help="how the calculator is described: with an example call (default), or DSPy's rendering of the function",
    )
    ap.add_argument("--minutes", type=float, default=None, help="start no new item after this many minutes")
    ap.add_argument(
        "--langchain",
        type=int,
        default=0,
        metavar="K",
        help="then the same conditions as a LangChain create_agent loop over ChatL2Reason, on the first K items",
    )
    ap.add_argument("--langchain-minutes", type=float, default=None, help="the LangChain part's own time budget")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "used_by_agent" / "vllm_0.5b"))
    ap.add_argument("--report", action="store_true", help="only write README.md from the stored lines")
    return ap.parse_args(argv)


def agents(args: argparse.Namespace) -> dict[str, Any]:
    """One ReAct agent per condition, each wrapped in its l2reason module."""
    import dspy
    from react_steer import calculator

    import l2reason.dspy as l2

    tool = calculator if args.tool == "dspy" else dspy.Tool(calculator, desc=TOOL_DESC)

    def react() -> Any:
        return dspy.ReAct("question -> answer: str", tools=[tool], max_iters=args.max_iters)

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
    ``first_invalid``: the first failed call's arguments and the last line of
    its error (ReAct's ``Execution error`` holds a whole traceback).

    Example:
        >>> t = {"tool_name_0": "calculator", "tool_args_0": {"expression": "x"}, "observation_0": "error: bad",
        ...      "tool_name_1": "finish", "observation_1": "Completed."}
        >>> trajectory_stats(t, 4)
        {'steps': 2, 'tool_calls': 1, 'invalid_tool_calls': 1, 'finished': True, 'format_fail_step': False, \
'first_invalid': '{"expression": "x"} -> error: bad'}
    """
    steps = sorted(int(k.rsplit("_", 1)[1]) for k in traj if k.startswith("tool_name_"))
    names = [traj[f"tool_name_{i}"] for i in steps]
    invalid = [
        i
        for i in steps
        if traj[f"tool_name_{i}"] != "finish"
        and str(traj.get(f"observation_{i}", "")).startswith(("error:", "Execution error"))
    ]
    finished = bool(names) and names[-1] == "finish"
    first = None
    if invalid:
        i = invalid[0]
        lines = [ln for ln in str(traj[f"observation_{i}"]).splitlines() if ln.strip()]
        args = json.dumps(traj.get(f"tool_args_{i}"), default=str)
        first = f"{args[:80]} -> {lines[-1][:120] if lines else ''}"
    return {
        "steps": len(names),
        "tool_calls": sum(n != "finish" for n in names),
        "invalid_tool_calls": len(invalid),
        "finished": finished,
        "format_fail_step": not finished and len(names) < max_iters,
        "first_invalid": first,
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


#: the LangChain agent's system prompt (the calculator's schema comes from the model's own chat template)
LC_PROMPT = (
    "Solve the problem. Use the calculator tool for the arithmetic. When you know the result, reply with the "
    "final number only."
)


def lc_agents(args: argparse.Namespace, backend: Any) -> dict[str, Any]:
    """The same conditions as a LangChain ``create_agent`` loop over ``ChatL2Reason`` (settings as in :func:`agents`)."""
    from langchain.agents import create_agent
    from react_steer import calculator

    from l2reason.langchain import ChatL2Reason

    erss = {"kind": "erss", "beta": args.beta, "S": 8, "threshold": {"warmup": 8}}
    make: dict[str, dict[str, Any]] = {
        "plain": {},
        "select": {"n": args.n, "selection": "l2", "temperature": 0.7},
        "steer": {"interventions": [erss]},
        "recurse": {"interventions": [{"kind": "alrr"}]},
    }
    conds = [c for c in args.conditions.split(",") if c]
    return {
        c: create_agent(
            ChatL2Reason(backend=backend, max_tokens=args.max_tokens, **make[c]),
            tools=[calculator],
            system_prompt=LC_PROMPT,
        )
        for c in conds
    }


def run_lc_agent(agent: Any, data: Any, item: Any, max_iters: int) -> dict[str, Any]:
    """One LangChain agent on one item, with the fields of :func:`run_agent`.

    At most ``max_iters`` model calls (LangGraph's recursion limit); a run
    that reaches it counts as ``error`` (no final answer). A tool call counts
    as invalid when it did not parse (``AIMessage.invalid_tool_calls``) or
    its ``ToolMessage`` is an error (the tool raised, or the calculator's ``error:``).
    """
    from langchain_core.messages import AIMessage, ToolMessage
    from langgraph.errors import GraphRecursionError

    t0 = time.perf_counter()
    msgs: list[Any] = []
    err = None
    try:
        for state in agent.stream(
            {"messages": [("user", item.question)]}, {"recursion_limit": 2 * max_iters}, stream_mode="values"
        ):
            msgs = state["messages"]
    except GraphRecursionError:
        err = f"GraphRecursionError: no final answer in {max_iters} model calls"
    ai = [m for m in msgs if isinstance(m, AIMessage)]
    tool_msgs = [m for m in msgs if isinstance(m, ToolMessage)]
    bad = [m.content for m in tool_msgs if m.status == "error" or str(m.content).startswith("error:")]
    bad += [c.get("error") or "unparsed" for m in ai for c in m.invalid_tool_calls]
    finished = bool(ai) and not ai[-1].tool_calls and err is None
    answer = str(ai[-1].content) if finished else ""
    return {
        "item": item.id,
        "gold": item.answer,
        "answer": answer,
        "correct": bool(data.score(answer, item)) if finished else False,
        "error": err,
        "steps": len(ai),
        "tool_calls": sum(len(m.tool_calls) + len(m.invalid_tool_calls) for m in ai),
        "invalid_tool_calls": len(bad),
        "finished": finished,
        "format_fail_step": False,
        "first_invalid": str(bad[0])[:160] if bad else None,
        "lm_calls": len(ai),
        "tokens": sum(int(m.usage_metadata["output_tokens"]) if m.usage_metadata else 0 for m in ai),
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


def paired(path: Path) -> tuple[list[dict[str, Any]], list[str], dict[str, dict[str, bool]], list[str]]:
    """A results file's latest rows, its conditions, correctness per condition and item, the items all finished."""
    rows = latest(read_jsonl(path))
    conds = [c for c in CONDITIONS if any(r["condition"] == c for r in rows)]
    by = {c: {r["item"]: bool(r["correct"]) for r in rows if r["condition"] == c} for c in conds}
    items = sorted(
        set.intersection(*(set(v) for v in by.values())) if by else set(), key=lambda i: int(i.split(":")[-1])
    )
    return rows, conds, by, items


def langchain_section(out: Path) -> list[str]:
    """The LangChain ``create_agent`` part of ``README.md`` (empty without ``langchain.jsonl``)."""
    path = out / "langchain.jsonl"
    if not path.exists():
        return []
    rows, conds, by, items = paired(path)
    return [
        f"## The same agent in LangChain (`create_agent` over `ChatL2Reason`, {len(items)} items)",
        "",
        "`langchain.agents.create_agent(ChatL2Reason(backend=…, max_tokens=…, n/selection/interventions as "
        "above), tools=[calculator], system_prompt=LC_PROMPT)`: the tool's schema reaches the model through "
        "its own chat template (Qwen2.5's `<tool_call>` format), not through DSPy's prompt. A run that makes "
        "`max_iters` model calls without a final answer counts in the 'run raised' column.",
        "",
        *paired_table(by, conds, items, [(c, "plain") for c in conds if c != "plain"]),
        "",
        *summary_table(rows, conds, set(items)),
        "",
    ]


def write_readme(out: Path) -> str:
    """``README.md`` from the stored lines (items every condition has finished)."""
    run = json.loads((out / "run.json").read_text())
    st = run["settings"]
    rows, conds, by, items = paired(out / "results.jsonl")
    status = "complete" if len(items) >= st["limit"] else f"**partial**: {len(items)} of {st['limit']} items"
    lines = [
        "# The l2reason modules inside a ReAct tool loop (calculator)",
        "",
        f"Status: {status}. Written by `benchmarks/agent_loop.py`.",
        "",
        f'Agent `dspy.ReAct("question -> answer: str", tools=[calculator], max_iters={st["max_iters"]})`; '
        f"data `{st['dataset']}` items {st['offset']}–{st['offset'] + st['limit'] - 1}; model `{st['model']}`, "
        f"greedy except `select` (n={st['n']}), at most {st['max_tokens']} new tokens per step; steer beta "
        f"{st['beta']}; ChatAdapter without the JSON fallback; calculator described "
        + ("by DSPy from the function" if st.get("tool") == "dspy" else "with an example call (`TOOL_DESC`)")
        + ".",
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
        *langchain_section(out),
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return f"wrote {out / 'README.md'} ({len(items)} items in every condition)"


def run_jobs(
    path: Path, progs: dict[str, Any], items: list[Any], run: Any, minutes: float | None, threads: int
) -> None:
    """``run(prog, item)`` for every condition and item not yet in ``path``, item by item, one line each.

    With ``minutes``, no job starts after that long (the rest is left for a re-run).
    """
    sink = Sink(path)
    done = {(r["condition"], r["item"]) for r in read_jsonl(path)}
    jobs = [(c, it) for it in items for c in progs if (c, it.id) not in done]
    stop = time.monotonic() + 60 * minutes if minutes else float("inf")

    def job(j: tuple[str, Any]) -> None:
        if time.monotonic() <= stop:
            sink.write({"condition": j[0], **run(progs[j[0]], j[1])})

    parallel(job, jobs, threads, path.stem)


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
        lm = l2.configure_dspy(args.model, max_tokens=args.max_tokens, cache=False)
        dspy.configure(adapter=dspy.ChatAdapter(use_json_adapter_fallback=False))
        run_jobs(
            out / "results.jsonl",
            agents(args),
            items,
            lambda prog, it: run_agent(prog, data, it, args.max_iters),
            args.minutes,
            args.threads,
        )
        if args.langchain:
            run_jobs(
                out / "langchain.jsonl",
                lc_agents(args, lm.engine.backend),
                items[: args.langchain],
                lambda prog, it: run_lc_agent(prog, data, it, args.max_iters),
                args.langchain_minutes,
                args.threads,
            )
    print(write_readme(out))


if __name__ == "__main__":
    main()
