"""``l2reason eval`` and ``l2reason report``: run an evaluation (resumable) and show its report.

Example:
    l2reason eval --dataset gsm_symbolic:seed=42 --limit 100 -n 8 --gen-methods greedy --out runs/gsm
    l2reason report runs/gsm

On the console the report's accuracy table is a compact one that fits 80 columns (:func:`accuracy_table`);
the full table, with p-values and McNemar counts, is in ``report.md`` and ``report.json``.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from l2reason.cli._common import (
    JsonOpt,
    app,
    console,
    err,
    load_backend,
    print_json,
    set_threads,
    table,
    text,
    version,
)

NO_SYSTEM_PROMPT = "none"


def _env(threads: int) -> dict[str, Any]:
    import torch
    import transformers

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "l2reason": version(),
    }


def system_prompt_choice(value: str | None) -> dict[str, Any]:
    """The ``RunConfig`` fields for ``--system-prompt TEXT|@FILE|none`` (None: the dataset's own, else the default).

    ``TEXT`` or the UTF-8 file ``@FILE`` (surrounding whitespace removed) is the system message of every
    item, over any prompt the dataset brings; ``none`` sends no system message at all.
    """
    from l2reason.errors import ConfigError
    from l2reason.eval.harness import DEFAULT_SYSTEM
    from l2reason.files import read_text_file

    if value is None:
        return {"system_prompt": DEFAULT_SYSTEM, "system_prompt_override": False}
    if value == NO_SYSTEM_PROMPT:
        return {"system_prompt": None, "system_prompt_override": True}
    prompt = read_text_file(value[1:], "--system-prompt file").strip() if value.startswith("@") else value.strip()
    if not prompt:
        raise ConfigError(
            f"--system-prompt {value!r} is empty; give the prompt's text, @FILE with the text, "
            f"or {NO_SYSTEM_PROMPT!r} for no system prompt"
        )
    return {"system_prompt": prompt, "system_prompt_override": True}


@app.command("eval", help="Evaluate selection and generation methods on a dataset (resumable).")
def eval_cmd(
    dataset: Annotated[
        str, typer.Option("--dataset", "-d", help="gsm_symbolic[:seed=N], chain_sum, evals:<task>, jsonl:<path>, ...")
    ] = "gsm_symbolic:seed=42",
    limit: Annotated[int, typer.Option(min=1, help="items (from --offset)")] = 100,
    offset: Annotated[int, typer.Option(min=0, help="first item index")] = 0,
    methods: Annotated[
        str, typer.Option(help="selection methods scored on the N samples: 'all', 'none' or a comma list")
    ] = "all",
    gen_methods: Annotated[
        str,
        typer.Option(
            help="generation passes: comma list of greedy, alrr, erss, static-steer, suppress-high, "
            "suppress-random, suppress-matched ('default' = greedy,alrr,erss,suppress-high,suppress-random,"
            "suppress-matched; 'none')"
        ),
    ] = "greedy",
    n: Annotated[int, typer.Option("-n", "--n", min=0, help="samples per item (0 = no selection pass)")] = 8,
    model: Annotated[str, typer.Option("--model", "-m", help="model spec ('default', a path, a hub id)")] = "default",
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="run folder (resumed if it exists)")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-t", min=1)] = 512,
    temperature: Annotated[float, typer.Option(min=0.0, help="sampling temperature of the N samples")] = 0.7,
    top_p: Annotated[float, typer.Option(min=0.01, max=1.0)] = 0.95,
    seed: int = 0,
    system_prompt: Annotated[
        str | None,
        typer.Option(
            "--system-prompt",
            help="the system prompt of every item: TEXT, @FILE (its text) or 'none' (no system message); it wins "
            "over the dataset's own (default: the dataset's where it has one, else a short math-tutor prompt)",
        ),
    ] = None,
    batch_items: Annotated[int, typer.Option(min=1, help="items per batched forward (N x this rows)")] = 2,
    gen_limit: Annotated[int | None, typer.Option(min=1, help="items of each generation pass (default: all)")] = None,
    report: Annotated[bool, typer.Option(help="write the report when done")] = True,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: torch's)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Sample N candidates per item once, score every selection method on them, run generation passes.

    Resumes a killed run: finished items are kept in RUN/samples.jsonl and RUN/gen/*.jsonl.
    --json prints what was stored and the report's data (report.json) as one JSON object.

    Long because: 38 of its lines declare its options (typer reads them from the signature); the body is one
    straight sequence (check the settings, load the model, run, report). ``--help`` shows the ``help=`` above.
    """
    from l2reason.eval.datasets import load_dataset
    from l2reason.eval.harness import RunConfig, run_eval
    from l2reason.eval.methods import AUTO, PROBE, PROBE_VOTE, parse_method_list
    from l2reason.files import check_output_dir

    run_dir = out_dir or Path("runs") / f"{dataset.replace(':', '_').replace('=', '')}-n{n}"
    ds = load_dataset(dataset)  # fail on a bad name before the model loads
    sel = parse_method_list(methods, "selection")
    gens = parse_method_list(gen_methods, "generation")
    prompt = system_prompt_choice(system_prompt)
    check_output_dir(run_dir, "--out")
    nthreads = set_threads(threads)
    be = load_backend(model)
    # a corrupt or foreign calibration file fails here, before any sampling
    cal = be.calibration if AUTO in sel or PROBE in sel or PROBE_VOTE in sel else None
    cfg = RunConfig(
        dataset=ds.name if hasattr(ds, "name") else dataset,
        model=model,
        model_id=be.model_id,
        num_layers=be.num_layers,
        limit=limit,
        offset=offset,
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        **prompt,
        methods=sel,
        gen_methods=gens,
        gen_limit=gen_limit,
        batch_items=batch_items,
        auto_selection=cal.selection if AUTO in sel and cal is not None else None,
        probe=cal.probe if (PROBE in sel or PROBE_VOTE in sel) and cal is not None else None,
        env=_env(nthreads),
    )
    run = run_eval(be, cfg, run_dir, dataset=ds)
    stored = {"samples": len(run.samples), **{k: len(v) for k, v in run.gens.items()}}
    passes = ", ".join(f"{k}: {len(v)}" for k, v in run.gens.items())
    err.print(text(f"stored {len(run.samples)} sampled items and {passes} in "), text(run_dir, "bold"), sep="")
    if not report:
        if as_json:
            print_json({"run_dir": str(run_dir), "stored": stored, "report": None})
        return
    md = _write_report(run_dir, None, plots=True, n_boot=10_000)
    if as_json:
        data = json.loads((md.parent / "report.json").read_text(encoding="utf-8"))
        print_json({"run_dir": str(run_dir), "stored": stored, "report_md": str(md), "report": data})
        return
    _print_report(md)


@app.command("report", help="Re-render the report of an evaluation run folder.")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="the run folder written by `l2reason eval`")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="report folder (default RUN_DIR/report)")] = None,
    plots: Annotated[bool, typer.Option(help="draw the PNG plots")] = True,
    n_boot: Annotated[int, typer.Option(min=100, help="bootstrap resamples")] = 10_000,
    as_json: JsonOpt = False,
) -> None:
    """Re-render the markdown report, report.json and plots of a run (nothing is generated).

    --json prints report.json instead of the summary.
    """
    md = _write_report(run_dir, out_dir, plots=plots, n_boot=n_boot)
    if as_json:
        print_json((md.parent / "report.json").read_text(encoding="utf-8"))
        return
    _print_report(md)


def _write_report(run_dir: Path, out_dir: Path | None, *, plots: bool, n_boot: int) -> Path:
    from l2reason.errors import ConfigError
    from l2reason.eval.report import write_report
    from l2reason.files import check_output_dir

    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file; give the run folder written by `l2reason eval`")
    check_output_dir(out_dir if out_dir is not None else run_dir / "report", "--out")
    try:
        return write_report(run_dir, out_dir, plots=plots, n_boot=n_boot)
    except OSError as e:
        raise ConfigError(f"cannot write the report: {e}") from e


def _print_report(md: Path) -> None:
    """The report's summary on stdout: its heading, the compact accuracy table, the sections up to the per-layer
    tables; the report's path on stderr."""
    from rich.markdown import Markdown

    body = md.read_text(encoding="utf-8").split("## Per layer")[0]
    head, found, rest = body.partition("\n## Accuracy")
    console.print(Markdown(head))
    methods = json.loads((md.parent / "report.json").read_text(encoding="utf-8")).get("methods") or []
    if methods:
        console.print(accuracy_table(methods))
        console.print()
    after = rest.split("\n## ", 1)  # the accuracy section is replaced by the table; what follows it stays
    if found and len(after) == 2:
        console.print(Markdown("## " + after[1]))
    err.print("wrote ", text(md, "bold"), sep="")


def _points(x: float | None, fmt: str) -> str:
    """A fraction in points (``fmt``), or ``–`` when the report has none (stored NaN is ``null``)."""
    return "–" if x is None or x != x else format(100 * x, fmt)


def _delta(p: dict[str, Any] | None) -> str:
    """``+6.7 [-3, +17]``: a paired difference in points with its 95% CI; ``*`` when the CI excludes 0."""
    if p is None or p.get("diff") is None:
        return "–"
    star = "*" if p["lo"] > 0 or p["hi"] < 0 else ""
    return f"{100 * p['diff']:+.1f} [{100 * p['lo']:+.0f}, {100 * p['hi']:+.0f}]{star}"


def accuracy_table(methods: list[dict[str, Any]]) -> Table:
    """The accuracy rows of ``report.json`` as a table that fits 80 columns (one line per method)."""
    cols = ("method", "n", "acc %", "95% CI", "Δ greedy", "Δ majority")
    t = table(
        "accuracy; Δ: points vs greedy / majority vote on the shared items, 95% paired CI (* excludes 0)",
        cols,
        right=cols[1:],
    )
    t.columns[0].no_wrap, t.columns[0].overflow, t.columns[0].max_width = True, "ellipsis", 20
    for c in t.columns[1:]:
        c.no_wrap = True
    for m in methods:
        t.add_row(
            text(m["name"]),
            str(m["items"]),
            _points(m.get("acc"), ".1f"),
            f"[{_points(m.get('lo'), '.0f')}, {_points(m.get('hi'), '.0f')}]",
            _delta(m.get("vs_greedy")),
            _delta(m.get("vs_majority")),
        )
    return t
