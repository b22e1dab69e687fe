"""``l2reason calibrate``: per-layer τ from decode-token norms, or (``--select``) the ℓ2 band and score."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from l2reason.cli._common import (
    JsonOpt,
    ModelOpt,
    app,
    console,
    err,
    fail,
    load_backend,
    print_json,
    progress,
    set_threads,
    table,
    text,
)

if TYPE_CHECKING:
    from l2reason.signal.calibration import Calibration


@app.command()
def calibrate(
    model: ModelOpt = "default",
    out: Annotated[Path | None, typer.Option(help="calibration file (default: the model's file in the cache)")] = None,
    q: Annotated[float, typer.Option(min=0.5, max=0.999, help="quantile for τ_l")] = 0.95,
    prompts: Annotated[
        Path | None, typer.Option(help="text file, one prompt per line (default: built-in problems)")
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option("--max-new-tokens", "-t", min=1, help="generation limit (default: 160; 512 with --select)"),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    select: Annotated[
        bool,
        typer.Option(
            "--select", help="also choose the ℓ2 layer band + score on a labelled split (see docs/evaluation.md)"
        ),
    ] = False,
    dataset: Annotated[
        str, typer.Option("--dataset", "-d", help="labelled split for --select")
    ] = "gsm_symbolic:seed=7",
    limit: Annotated[int, typer.Option(min=2, help="items for --select")] = 40,
    n: Annotated[int, typer.Option("-n", min=2, help="candidates per item for --select")] = 8,
    batch_items: Annotated[int, typer.Option(min=1, help="items per batch for --select")] = 2,
    offset: Annotated[int, typer.Option(min=0, help="first item of the --select split")] = 0,
    run_dir: Annotated[
        Path | None, typer.Option(help="where --select stores its samples (resumed if it exists)")
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: torch's)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Collect decode-token norms on prompts and write a per-layer calibration file.

    With --select, sample n candidates per item of a labelled split instead and
    choose the layer band and ℓ2 score that best separate right from wrong
    candidates; the choice is stored in the calibration file.
    """
    if select:
        _calibrate_select(
            model=model,
            dataset=dataset,
            limit=limit,
            offset=offset,
            n=n,
            max_new_tokens=max_new_tokens or 512,
            temperature=0.7,
            seed=0,
            batch_items=batch_items,
            run_dir=run_dir,
            out_file=out,
            threads=threads,
            as_json=as_json,
        )
        return
    from l2reason.calibrate import calibrate as run_calibration
    from l2reason.files import check_output_file
    from l2reason.signal.calibration import default_calibration_path

    if out is not None:
        check_output_file(out, "--out")  # before the model loads
    texts = _prompt_texts(prompts)
    set_threads(threads)
    be = load_backend(model)
    with progress() as prog:
        task = prog.add_task("calibrating", total=len(texts))
        cal = run_calibration(
            be,
            texts,
            q=q,
            max_new_tokens=max_new_tokens or 160,
            batch_size=batch_size,
            on_batch=lambda k: prog.advance(task, k),
        )
    path = cal.save(out or default_calibration_path(be.model_id))
    if as_json:
        print_json({"file": str(path), **cal.model_dump(mode="json")})
        return
    _print_calibration(cal, q, path)


def _prompt_texts(prompts: Path | None) -> list[str]:
    """The calibration prompts: one per non-empty line of ``prompts``, or the built-in problems."""
    from l2reason.data import PROBLEMS
    from l2reason.files import read_text_file

    if prompts is None:
        return [p for p, _ in PROBLEMS]
    raw = read_text_file(prompts, "--prompts file")  # ConfigError: missing, a directory, not UTF-8
    texts = [line.strip() for line in raw.splitlines() if line.strip()]
    if not texts:
        raise fail(f"{prompts} holds no prompts (one per line)")
    return texts


def _print_calibration(cal: Calibration, q: float, path: Path) -> None:
    """The per-layer quartiles and τ_l of ``cal`` as a table, and the file it was written to."""
    cols = ("layer", "q1", "median", "q3", f"τ (q{q})", "tokens")
    t = table(f"τ_l = q{q:.2f} of decode-token norms", cols, right=cols)
    for i, layer in enumerate(cal.layers):
        t.add_row(
            str(layer),
            f"{cal.q1[i]:.1f}",
            f"{cal.median[i]:.1f}",
            f"{cal.q3[i]:.1f}",
            f"{cal.tau[i]:.1f}",
            str(cal.n_tokens[i]),
        )
    console.print(t)
    console.print("wrote ", text(path, "bold"), sep="")


def _calibrate_select(
    *,
    model: str,
    dataset: str,
    limit: int,
    offset: int,
    n: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_items: int,
    run_dir: Path | None,
    out_file: Path | None,
    threads: int | None,
    as_json: bool,
) -> None:
    """Choose the ℓ2 layer band and score on a labelled calibration split and store them (`calibrate --select`)."""
    from l2reason.eval.autocal import calibrate_select
    from l2reason.eval.datasets import load_dataset
    from l2reason.files import check_output_dir, check_output_file
    from l2reason.signal.calibration import Calibration

    load_dataset(dataset)
    if out_file is not None:
        check_output_file(out_file, "--out")
    check_output_dir(run_dir or Path("runs/calibrate-select"), "--run-dir")
    set_threads(threads)
    be = load_backend(model)
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
    probe = Calibration.load(path).probe
    if as_json:
        print_json({"file": str(path), "selection": choice, "probe": probe})
        return
    _print_choice(choice, probe)
    err.print(
        "wrote the selection and the probe into ",
        text(path, "bold"),
        "; evaluate them with `--methods ...,l2-auto,l2-probe,l2-probe-vote` on other items",
        sep="",
    )


def _print_choice(choice: dict[str, Any], probe: dict[str, Any] | None) -> None:
    """The ranked (band, score, direction) table, the default band's best score and the fitted probe."""
    cols = ("layers", "score", "pick", "within AUC", "argmax accuracy", "pairs")
    t = table("best (layer band, score, direction) by within-item AUC on the calibration split", cols)
    for r in choice["table"]:
        t.add_row(
            str(r["layers"]),
            r["score"],
            "highest" if r["direction"] == "high" else "lowest",
            f"{r['value']:.3f}",
            f"{r['accuracy']:.3f}",
            str(r["pairs"]),
        )
    console.print(t)
    d = choice.get("default_band")
    if d:
        console.print(
            f"default band {d['layers']}: best score {d['score']} ({d['direction']}) within AUC {d['value']:.3f}",
            markup=False,
        )
    if probe:
        from l2reason.techniques.probe import Probe

        info = probe.get("info") or {}
        top = Probe.from_dict(probe).top_effects(8)
        auc = info.get("train_within_auc")
        console.print(
            f"probe (l2-probe): {len(probe['features'])} features, penalty {probe['l2']:g}, fitted on "
            f"{info.get('mixed_items')} items with right and wrong candidates ({info.get('candidates')} candidates); "
            f"within-item AUC on the split {'–' if auc is None else f'{auc:.3f}'}; largest effects (logit per SD): "
            + ", ".join(f"{n} {w:+.2f}" for n, w in top),
            markup=False,
        )
