"""The ``l2reason`` command: ask, trace, calibrate, demo, serve, models."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

console = Console()
err = Console(stderr=True)


def user_error_message(e: BaseException) -> str | None:
    """The one-line message of a user mistake, or None for a bug (which keeps its traceback).

    User mistakes: any error l2reason raises on purpose, a pydantic validation
    error, a file that cannot be read or written, a file that is not UTF-8.
    """
    from pydantic import ValidationError

    from l2reason.errors import L2ReasonError

    if isinstance(e, L2ReasonError):
        return str(e)
    if isinstance(e, ValidationError):
        from l2reason.backends.validate import brief

        return f"invalid {e.title}: {brief(e)}"
    if isinstance(e, UnicodeDecodeError):
        return f"a file is not valid UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8"
    if isinstance(e, OSError) and (e.filename is not None or isinstance(e, FileNotFoundError | PermissionError)):
        where = f": {e.filename}" if e.filename is not None else ""
        return f"{e.strerror or e}{where}"
    return None


class _Group(typer.core.TyperGroup):
    """Every command's user mistakes end as ``error: ...`` and exit code 2, never a traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as e:  # click's own exits/usage errors pass through untouched
            import click

            if isinstance(e, click.exceptions.ClickException | click.exceptions.Exit | click.exceptions.Abort):
                raise
            msg = user_error_message(e)
            if msg is None:
                raise
            err.print(f"[red]error:[/red] {msg}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from e


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    help="l2reason: the ℓ2 norm of an LLM's residual stream as a signal for reasoning.",
)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="'default', 'fast', packaged:<name>, a .gguf, a folder, a hub id, a server sglang://host:port or "
        "vllm://host:port, or vllm:<model> (starts a vLLM server for this command; options as in "
        "vllm:default?dtype=float32&max_model_len=8192)",
    ),
]
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", "-t", min=1, help="generation limit")]


def _backend(model: str) -> Any:
    from l2reason.backends.shared import is_server_spec, make_backend
    from l2reason.errors import L2ReasonError

    what = (
        f"connecting to {model}"
        if is_server_spec(model)
        else f"loading {model} (the first time, the packaged model is assembled and converted: ~1 min)"
    )
    t0 = time.perf_counter()
    with err.status(what):
        try:
            be = make_backend(model)
        except L2ReasonError as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from e
    err.print(
        f"[dim]model {be.model_id} ({be.name}): {be.num_layers} layers x {be.hidden_size}, "
        f"ready in {time.perf_counter() - t0:.1f}s[/dim]"
    )
    return be


def _request(
    question: str, max_new_tokens: int, temperature: float, seed: int, layers: Any = "band", system: bool = True
) -> Any:
    from l2reason.backends.base import GenerationRequest, Message, NormSpec, SamplingParams
    from l2reason.data import SYSTEM_PROMPT
    from l2reason.errors import ConfigError

    msgs = ([Message(role="system", content=SYSTEM_PROMPT)] if system else []) + [
        Message(role="user", content=question)
    ]
    try:
        return GenerationRequest.build(
            messages=msgs,
            sampling=SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed),
            norms=NormSpec(layers=layers),
        )
    except ConfigError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e


def _print_stream(be: Any, req: Any) -> Any:
    """Print candidate 0's text as the backend decodes it; return the final result.

    Each piece is coloured by its tokens' mean norm over the captured layers
    against the running median so far: red above 1.1x, blue below 0.9x (rich
    drops the colour when the output is not a colour terminal).
    """
    import contextlib

    import numpy as np

    seen: list[float] = []
    res = None
    with contextlib.closing(be.generate_stream(req)) as events:
        for ev in events:
            if ev.kind == "result":
                res = ev.result
                continue
            if ev.candidate != 0 or not ev.text:
                continue
            style = None
            if ev.norms:
                level = float(np.mean(ev.norms))
                med = float(np.median(seen)) if seen else level
                seen.extend(float(np.mean(row)) for row in ev.norms)
                if level > 1.1 * med:
                    style = "red"
                elif level < 0.9 * med:
                    style = "blue"
            console.print(ev.text, style=style, end="", markup=False, highlight=False, soft_wrap=True)
    if res is None:  # the stream ended without its result: the backend broke its protocol
        from l2reason.errors import BackendError

        raise BackendError("the backend's stream ended without a result")
    return res


def _summary_table(c: Any, title: str = "ℓ2 norms (decode tokens)") -> Table:
    import numpy as np

    arr = c.norms.array()
    t = Table(title=title, show_lines=False)
    for col in ("layer", "mean", "p95", "max", "top tokens by norm"):
        t.add_column(col, justify="right" if col != "top tokens by norm" else "left")
    toks = c.tokens or []
    for i, layer in enumerate(c.norms.layers):
        col = arr[:, i]
        if col.size == 0:
            continue
        top = np.argsort(-col)[:3]
        names = ", ".join(repr(toks[j]) if j < len(toks) else str(j) for j in top)
        t.add_row(str(layer), f"{col.mean():.1f}", f"{np.percentile(col, 95):.1f}", f"{col.max():.1f}", names)
    return t


SELECT_CHOICES = (
    "l2",
    "l2-vote",
    "majority",
    "shortest",
    "random",
    "self-certainty",
    "self-certainty-borda",
    "deepconf",
    "deepconf-tail",
    "l2-probe",
    "l2-probe-vote",
)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    model: ModelOpt = "default",
    max_new_tokens: MaxNewOpt = 256,
    temperature: Annotated[float | None, typer.Option(min=0.0, help="default: 0 (greedy), 0.7 with --select")] = None,
    seed: int = 0,
    select: Annotated[
        str | None, typer.Option("--select", help=f"pick one of n candidates: {', '.join(SELECT_CHOICES)}")
    ] = None,
    n: Annotated[int, typer.Option("-n", min=1, help="candidates (with --select)")] = 4,
    score: Annotated[str, typer.Option(help="ℓ2 score for --select l2/l2-vote: B/T, A/T, C/T, D/T, z_mean")] = "B/T",
    recurse: Annotated[bool, typer.Option("--recurse", help="adaptive layer-wise recursion (ALRR, K=1, band)")] = False,
    steer: Annotated[bool, typer.Option("--steer", help="endogenous reasoning-state steering (ERSS, band)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the full result as JSON")] = False,
    stream: Annotated[
        bool, typer.Option("--stream", help="print the answer as it is decoded, coloured by norm (band median)")
    ] = False,
) -> None:
    """Answer a question and show a short norm summary of the band layers.

    With --select, n candidates are sampled in one batch and one is chosen;
    --recurse / --steer turn on the ℓ2 interventions and show what they did.
    --stream prints the tokens as they come (red: above 1.1x the running
    median of the band norm, blue: below 0.9x, on a colour terminal); with
    --select the candidates are decoded together and the chosen one is shown
    at the end, as without --stream.
    """
    from l2reason.backends.base import SelectionSpec

    if select is not None and select not in SELECT_CHOICES:
        err.print(f"[red]error:[/red] unknown --select {select!r}; choose one of {', '.join(SELECT_CHOICES)}")
        raise typer.Exit(2)
    temp = temperature if temperature is not None else (0.7 if select else 0.0)
    req = _request(question, max_new_tokens, temp, seed)
    update: dict[str, Any] = {}
    ivs: list[dict[str, Any]] = []
    if recurse:
        ivs.append({"kind": "alrr"})
    if steer:
        ivs.append({"kind": "erss"})
    if select:
        update["n"] = n
        update["selection"] = SelectionSpec(method=select, score=score)
        update["logprobs"] = 5
        if select.startswith("l2-probe"):  # the probe reads every layer and the evaluation's top-20 logprobs
            from l2reason.backends.base import NormSpec

            update["norms"] = NormSpec(layers="all")
            update["logprobs"] = 20
    try:
        from l2reason.backends.base import GenerationRequest

        req = GenerationRequest.build(**{**req.model_dump(), **update, "interventions": ivs})
    except Exception as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    be = _backend(model)
    from l2reason.errors import L2ReasonError

    streaming = stream and not as_json and not select and callable(getattr(be, "generate_stream", None))
    try:
        if streaming:
            console.rule("answer")
            res = _print_stream(be, req)
            console.print()
        else:
            res = be.generate(req)
    except L2ReasonError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    c = res.candidates[res.chosen_index]
    if as_json:
        console.print_json(res.model_dump_json())
        return
    if not streaming:
        console.rule(
            "answer" if not select else f"answer (candidate {res.chosen_index} of {len(res.candidates)}, by {select})"
        )
        console.print(c.text)
    console.rule()
    console.print(_summary_table(c))
    if select and res.selection:
        t = Table(title=f"candidates scored by {select}" + (f" ({score})" if select.startswith("l2") else ""))
        for col in ("#", "score", "tokens", "finish", "answer", ""):
            t.add_column(col, justify="right")
        from l2reason.eval.answers import extract_answer

        for cand, sc in zip(res.candidates, res.selection["scores"], strict=False):
            mark = "◀ chosen" if cand.index == res.chosen_index else ""
            t.add_row(
                str(cand.index),
                "-" if sc is None else f"{sc:.4g}",
                str(cand.completion_tokens),
                cand.finish_reason,
                str(extract_answer(cand.text)),
                mark,
            )
        console.print(t)
    for kind, rep in c.interventions.items():
        if kind == "alrr":
            console.print(
                f"[bold]ALRR[/bold] layers {rep['layers']}: active tokens {rep['active_tokens']}, "
                f"passes accepted {rep['passes_accepted']} of {rep['passes_tried']} over {rep['decode_steps']} steps"
            )
        elif kind == "erss":
            inj = rep["injections"]
            where = ", ".join(f"step {e['step']}@L{e['layer']} (cos {e['cos']:.2f})" for e in inj[:8])
            console.print(
                f"[bold]ERSS[/bold] ({rep['injection']}): {rep['fires']} triggers, {len(inj)} injections {where}"
            )
        else:
            console.print(f"[bold]{kind}[/bold]: {rep}")
    tps = res.completion_tokens / res.seconds if res.seconds else 0.0
    console.print(
        f"[dim]{res.completion_tokens} tokens ({c.finish_reason}) in {res.seconds:.1f}s, {tps:.1f} tok/s[/dim]"
    )


def _parse_layers(text: str) -> Any:
    """``all``, ``band`` or comma-separated ints, checked before any model loads."""
    from l2reason.errors import LayerError

    t = text.strip()
    if t in ("all", "band"):
        return t
    parts = [x.strip() for x in t.split(",")]
    if not t or any(not p for p in parts):
        raise LayerError(f"--layers {text!r}: give 'all', 'band' or comma-separated layer indices such as 18,19,20")
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise LayerError(
            f"--layers {text!r}: {', '.join(p for p in parts if not p.lstrip('-').isdigit())} is not a layer index; "
            "give 'all', 'band' or comma-separated integers"
        ) from None


@app.command()
def trace(
    question: Annotated[str, typer.Argument(help="the question")],
    out: Annotated[Path, typer.Option("--out", "-o", help="heatmap image (.png/.svg/.pdf)")] = Path("norms.png"),
    html: Annotated[Path | None, typer.Option(help="HTML page (default: next to --out)")] = None,
    model: ModelOpt = "default",
    max_new_tokens: MaxNewOpt = 160,
    layers: Annotated[str, typer.Option(help="'all', 'band', or comma-separated indices")] = "all",
) -> None:
    """Draw a layers x tokens heatmap of norms and an HTML page with tokens coloured by norm."""
    from l2reason.files import check_output_file
    from l2reason.signal.band import default_band
    from l2reason.viz import norm_heatmap, norm_html

    check_output_file(out, "--out", (".png", ".svg", ".pdf"))  # before the model loads
    check_output_file(html or out.with_suffix(".html"), "--html")

    spec = _parse_layers(layers)
    req = _request(question, max_new_tokens, 0.0, 0, layers=spec)
    be = _backend(model)
    res = be.generate(req)
    c = res.candidates[0]
    console.print(c.text)
    png = norm_heatmap(c, out, title=f"{be.model_id}: ‖x‖ / layer median")
    band = [layer for layer in default_band(be.num_layers) if layer in c.norms.layers] or None
    page = norm_html(c, html or out.with_suffix(".html"), band=band, title=question[:80])
    console.print(f"wrote [bold]{png}[/bold] and [bold]{page}[/bold]")


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
) -> None:
    """Collect decode-token norms on prompts and write a per-layer calibration file.

    With --select, sample n candidates per item of a labelled split instead and
    choose the layer band and ℓ2 score that best separate right from wrong
    candidates; the choice is stored in the calibration file.
    """
    if select:
        from l2reason.eval.cli import calibrate_select_cmd

        calibrate_select_cmd(
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
        )
        return
    from l2reason.calibrate import calibrate as run_calibration
    from l2reason.data import PROBLEMS
    from l2reason.files import check_output_file, read_text_file
    from l2reason.signal.calibration import default_calibration_path

    texts = [p for p, _ in PROBLEMS]
    if out is not None:
        check_output_file(out, "--out")  # before the model loads
    if prompts is not None:
        text = read_text_file(prompts, "--prompts file")  # ConfigError: missing, a directory, not UTF-8
        texts = [line.strip() for line in text.splitlines() if line.strip()]
        if not texts:
            err.print(f"[red]error:[/red] {prompts} holds no prompts (one per line)")
            raise typer.Exit(2)
    be = _backend(model)
    with _progress() as prog:
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
    t = Table(title=f"τ_l = q{q:.2f} of decode-token norms")
    for col in ("layer", "q1", "median", "q3", f"τ (q{q})", "tokens"):
        t.add_column(col, justify="right")
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
    console.print(f"wrote [bold]{path}[/bold]")


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
    )


@app.command()
def demo(
    model: ModelOpt = "default",
    out: Annotated[Path, typer.Option(help="folder for the heatmap and HTML")] = Path("out/demo"),
    problems: Annotated[int, typer.Option(min=1, max=16)] = 3,
    max_new_tokens: MaxNewOpt = 200,
) -> None:
    """The main job: answer a few grade-school math problems, show norm summaries, write a heatmap."""
    from l2reason.data import PROBLEMS
    from l2reason.eval.answers import answers_equal, extract_answer
    from l2reason.files import check_output_dir
    from l2reason.viz import norm_heatmap, norm_html

    check_output_dir(out, "--out")  # before the model loads
    be = _backend(model)
    chosen = PROBLEMS[:problems]
    reqs = [_request(q, max_new_tokens, 0.0, 0, layers="all") for q, _ in chosen]
    t0 = time.perf_counter()
    with err.status(f"answering {len(reqs)} problems in one batch (greedy, ≤{max_new_tokens} tokens each)"):
        results = be.generate_many(reqs)
    secs = time.perf_counter() - t0
    from l2reason.signal.band import default_band

    band = default_band(be.num_layers)
    summary = Table(title=f"{be.model_id}: answers and band-layer norms (band = layers {band[0]}..{band[-1]})")
    for col in ("#", "gold", "extracted", "ok", "tokens", "band mean ‖x‖", "band p95", "tokens > p95 of own run"):
        summary.add_column(col, justify="right")
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, ((question, gold), res) in enumerate(zip(chosen, results, strict=True), 1):
        c = res.candidates[0]
        console.rule(f"problem {i}")
        console.print(f"[bold]{question}[/bold]")
        console.print(c.text)
        arr = c.norms.array()
        cols = [c.norms.layers.index(layer) for layer in band]
        b = arr[:, cols].mean(axis=1)
        import numpy as np

        pred = extract_answer(c.text)
        ok = answers_equal(pred, gold)
        p95 = float(np.percentile(b, 95)) if b.size else 0.0
        summary.add_row(
            str(i),
            gold,
            str(pred),
            "✓" if ok else "✗",
            str(c.completion_tokens),
            f"{b.mean():.1f}",
            f"{p95:.1f}",
            str(int((b > p95).sum())),
        )
        records.append(
            {
                "question": question,
                "gold": gold,
                "pred": pred,
                "correct": ok,
                "text": c.text,
                "tokens": c.completion_tokens,
            }
        )
        if i == 1:
            png = norm_heatmap(c, out / "norms.png", title=f"problem 1: ‖x‖ / layer median, all {be.num_layers} layers")
            page = norm_html(c, out / "norms.html", band=band, title=question)
    console.print(summary)
    ntok = sum(r["tokens"] for r in records)
    (out / "answers.json").write_text(json.dumps(records, indent=2))
    console.print(f"{ntok} tokens in {secs:.1f}s ({ntok / secs:.1f} tok/s batched)")
    console.print(f"wrote [bold]{png}[/bold], [bold]{page}[/bold] and [bold]{out / 'answers.json'}[/bold]")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    model: ModelOpt = "default",
    engine: Annotated[
        str, typer.Option(help="'sglang' or 'vllm' (each in its own environment: make sglang / make vllm)")
    ] = "sglang",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to serve on")] = 30000,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    device: Annotated[str, typer.Option(help="SGLang: 'cuda' (GPU) or 'cpu' (slow; for trying it out)")] = "cuda",
    tp: Annotated[int, typer.Option(min=1, help="tensor-parallel size (GPUs per replica)")] = 1,
    dp: Annotated[int, typer.Option(min=1, help="data-parallel replicas")] = 1,
    python: Annotated[str | None, typer.Option(help="the engine environment's Python (default .venv-<engine>)")] = None,
    log: Annotated[Path | None, typer.Option(help="server log file (default <engine>-server.log)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the server to be ready")] = 900.0,
) -> None:
    """Start SGLang or vLLM with the l2reason plugin; extra arguments go to the engine's server.

    Example: l2reason serve -m default --device cpu -- --context-length 2048
    Example: l2reason serve -m default --engine vllm -- --max-model-len 2048
    """
    from l2reason.errors import L2ReasonError

    if engine not in ("sglang", "vllm"):
        err.print(f"[red]error:[/red] --engine must be 'sglang' or 'vllm' (got {engine!r})")
        raise typer.Exit(2)
    extra = [a for a in ctx.args if a != "--"]
    log = log or Path(f"{engine}-server.log")
    server: Any
    Client: Any
    try:
        if engine == "vllm":
            from l2reason.backends.vllm import VLLMBackend as Client
            from l2reason.backends.vllm.server import VLLMServer

            if dp != 1:
                raise typer.BadParameter("--dp is SGLang's; run one vLLM server per replica")
            server = VLLMServer(model, port=port, host=host, tp=tp, extra_args=extra, python=python, log_path=log)
        else:
            from l2reason.backends.sglang import SGLangBackend as Client
            from l2reason.backends.sglang.server import SGLangServer

            server = SGLangServer(
                model, port=port, host=host, device=device, tp=tp, dp=dp, extra_args=extra, python=python, log_path=log
            )
        with err.status(f"starting {server.engine} with the l2reason plugin on {server.url} (log: {log})"):
            server.start(timeout=timeout)
            be = Client(server.url)  # the plugin self-check: per-token norms must come back
    except L2ReasonError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    spec = f"{engine}://{host}:{port}"
    console.print(
        f"[green]l2reason + {server.engine} ready[/green] at {server.url} ({be.model_id}, {be.num_layers} layers)"
    )
    console.print(f"  CLI:    l2reason ask '2+2?' --model {spec}")
    console.print(f"  DSPy:   l2reason.configure_dspy({spec!r})")
    console.print(f"  Python: {type(be).__name__}({spec!r})")
    console.print("Ctrl-C stops the server.")
    try:
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(1.0)
        err.print(f"[red]the server exited (code {server.proc.returncode if server.proc else '?'})[/red]; log: {log}")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@app.command()
def models() -> None:
    """List the packaged (offline) models and whether they are installed/converted."""
    from l2reason.errors import ModelSourceError
    from l2reason.models.load import CONVERTED_MARKER, converted_dir
    from l2reason.models.registry import PACKAGED

    t = Table(title="packaged models")
    for col in ("spec", "aliases", "installed", "converted", "notes"):
        t.add_column(col)
    for m in PACKAGED.values():
        try:
            m.package_dirs()
            inst = "yes"
        except ModelSourceError:
            inst = f"no: {m.install_hint()}"
        conv = "yes" if (converted_dir(m) / CONVERTED_MARKER).is_file() else "no"
        t.add_row(f"packaged:{m.name}", ", ".join(m.aliases), inst, conv, m.notes)
    console.print(t)


def _register_eval() -> None:
    from l2reason.eval.cli import eval_cmd, report_cmd

    app.command("eval", help="Evaluate selection and generation methods on a dataset (resumable).")(eval_cmd)
    app.command("report", help="Re-render the report of an evaluation run folder.")(report_cmd)


_register_eval()


def _register_sae() -> None:
    from l2reason.sae.cli import register

    register(app)


_register_sae()


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


if __name__ == "__main__":  # pragma: no cover
    app()
