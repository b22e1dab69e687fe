"""Typer commands of the evaluation: ``l2reason eval``, ``l2reason report``, ``calibrate --select``.

The main CLI (:mod:`l2reason.cli`) registers these functions; each can also be
run on its own (``typer.run(eval_cmd)``).

Example:
    l2reason eval --dataset gsm_symbolic:seed=42 --limit 100 -n 8 --gen-methods greedy --out runs/gsm
    l2reason report runs/gsm
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = ["calibrate_select_cmd", "eval_cmd", "report_cmd"]

err = Console(stderr=True)
out = Console()
logger = logging.getLogger(__name__)


def _fail(e: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {e}")
    return typer.Exit(2)


def _env(threads: int) -> dict[str, Any]:
    import torch
    import transformers

    from l2reason.signal.calibration import _version

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "l2reason": _version(),
    }


def _load_backend(model: str) -> Any:
    from l2reason.backends.shared import make_backend
    from l2reason.errors import L2ReasonError

    with err.status(f"loading {model}"):
        try:
            return make_backend(model)
        except L2ReasonError as e:
            raise _fail(e) from e


def _threads(threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


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
    batch_items: Annotated[int, typer.Option(min=1, help="items per batched forward (N x this rows)")] = 2,
    gen_limit: Annotated[int | None, typer.Option(min=1, help="items of each generation pass (default: all)")] = None,
    report: Annotated[bool, typer.Option(help="write the report when done")] = True,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: torch's)")] = None,
) -> None:
    """Sample N candidates per item once, score every selection method on them, run generation passes.

    Resumes a killed run: finished items are kept in RUN/samples.jsonl and RUN/gen/*.jsonl.
    """
    from l2reason.errors import L2ReasonError
    from l2reason.eval.datasets import load_dataset
    from l2reason.eval.harness import RunConfig, run_eval
    from l2reason.eval.methods import AUTO, PROBE, PROBE_VOTE, parse_method_list
    from l2reason.files import check_output_dir

    run_dir = out_dir or Path("runs") / f"{dataset.replace(':', '_').replace('=', '')}-n{n}"
    try:
        ds = load_dataset(dataset)  # fail on a bad name before the model loads
        sel = parse_method_list(methods, "selection")
        gens = parse_method_list(gen_methods, "generation")
        check_output_dir(run_dir, "--out")
    except L2ReasonError as e:
        raise _fail(e) from e
    nthreads = _threads(threads)
    be = _load_backend(model)
    auto = None
    try:
        if AUTO in sel:
            cal = be.calibration  # a corrupt or foreign calibration file fails here, before any sampling
            auto = cal.selection if cal is not None else None
        probe = None
        if PROBE in sel or PROBE_VOTE in sel:
            cal = be.calibration
            probe = cal.probe if cal is not None else None
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
            methods=sel,
            gen_methods=gens,
            gen_limit=gen_limit,
            batch_items=batch_items,
            auto_selection=auto,
            probe=probe,
            env=_env(nthreads),
        )
        run = run_eval(be, cfg, run_dir, dataset=ds)
    except L2ReasonError as e:
        raise _fail(e) from e
    err.print(
        f"stored {len(run.samples)} sampled items and "
        + ", ".join(f"{k}: {len(v)}" for k, v in run.gens.items())
        + f" in [bold]{run_dir}[/bold]"
    )
    if report:
        report_cmd(run_dir)


def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="the run folder written by `l2reason eval`")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="report folder (default RUN_DIR/report)")] = None,
    plots: Annotated[bool, typer.Option(help="draw the PNG plots")] = True,
    n_boot: Annotated[int, typer.Option(min=100, help="bootstrap resamples")] = 10_000,
) -> None:
    """Re-render the markdown report, report.json and plots of a run (nothing is generated)."""
    from l2reason.errors import ConfigError, L2ReasonError
    from l2reason.eval.report import write_report
    from l2reason.files import check_output_dir

    try:
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"{run_dir} is a file; give the run folder written by `l2reason eval`")
        check_output_dir(out_dir if out_dir is not None else run_dir / "report", "--out")
        md = write_report(run_dir, out_dir, plots=plots, n_boot=n_boot)
    except L2ReasonError as e:
        raise _fail(e) from e
    except OSError as e:
        raise _fail(ValueError(f"cannot write the report: {e}")) from e
    from rich.markdown import Markdown

    text = md.read_text(encoding="utf-8")
    out.print(Markdown(text.split("## Per layer")[0]))
    err.print(f"wrote [bold]{md}[/bold]")


def calibrate_select_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="model spec")] = "default",
    dataset: Annotated[
        str, typer.Option("--dataset", "-d", help="calibration split (keep it disjoint from the evaluation)")
    ] = "gsm_symbolic:seed=7",
    limit: Annotated[int, typer.Option(min=2)] = 40,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    n: Annotated[int, typer.Option("-n", "--n", min=2)] = 8,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-t", min=1)] = 512,
    temperature: Annotated[float, typer.Option(min=0.01)] = 0.7,
    seed: int = 0,
    batch_items: Annotated[int, typer.Option(min=1)] = 2,
    run_dir: Annotated[Path | None, typer.Option(help="where the calibration samples are stored")] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="calibration file (default: the model's file)")
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Choose the ℓ2 layer band and score on a labelled calibration split and store them (`calibrate --select`)."""
    from rich.table import Table

    from l2reason.errors import L2ReasonError
    from l2reason.eval.autocal import calibrate_select
    from l2reason.eval.datasets import load_dataset
    from l2reason.files import check_output_dir, check_output_file

    try:
        load_dataset(dataset)
        if out_file is not None:
            check_output_file(out_file, "--out")
        check_output_dir(run_dir or Path("runs/calibrate-select"), "--run-dir")
    except L2ReasonError as e:
        raise _fail(e) from e
    _threads(threads)
    be = _load_backend(model)
    try:
        path, choice = calibrate_select(
            be,
            dataset=dataset,
            limit=limit,
            offset=offset,
            n=n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            batch_items=batch_items,
            run_dir=run_dir,
            out=out_file,
            model=model,
        )
    except L2ReasonError as e:
        raise _fail(e) from e
    t = Table(title="best (layer band, score, direction) by within-item AUC on the calibration split")
    for col in ("layers", "score", "pick", "within AUC", "argmax accuracy", "pairs"):
        t.add_column(col)
    for r in choice["table"]:
        t.add_row(
            str(r["layers"]),
            r["score"],
            "highest" if r["direction"] == "high" else "lowest",
            f"{r['value']:.3f}",
            f"{r['accuracy']:.3f}",
            str(r["pairs"]),
        )
    out.print(t)
    d = choice.get("default_band")
    if d:
        out.print(f"default band {d['layers']}: best score {d['score']} ({d['direction']}) within AUC {d['value']:.3f}")
    from l2reason.signal.calibration import Calibration

    probe = Calibration.load(path).probe
    if probe:
        info = probe.get("info") or {}
        from l2reason.techniques.probe import Probe

        top = Probe.from_dict(probe).top_effects(8)
        auc = info.get("train_within_auc")
        out.print(
            f"probe (l2-probe): {len(probe['features'])} features, penalty {probe['l2']:g}, fitted on "
            f"{info.get('mixed_items')} items with right and wrong candidates ({info.get('candidates')} candidates); "
            f"within-item AUC on the split {'–' if auc is None else f'{auc:.3f}'}; largest effects (logit per SD): "
            + ", ".join(f"{n} {w:+.2f}" for n, w in top)
        )
    err.print(
        f"wrote the selection and the probe into [bold]{path}[/bold]; evaluate them with "
        "`--methods ...,l2-auto,l2-probe,l2-probe-vote` on other items"
    )
