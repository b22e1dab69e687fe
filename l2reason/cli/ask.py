"""``l2reason ask``, ``trace`` and ``demo``: answer questions and show the norms of the answer.

The answers are printed verbatim (:func:`~l2reason.cli._common.print_text`): model text never goes through
rich's markup.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from l2reason.cli._common import (
    JsonOpt,
    MaxNewOpt,
    ModelOpt,
    app,
    chat_request,
    console,
    err,
    fail,
    load_backend,
    parse_layers,
    print_json,
    print_text,
    table,
    text,
)

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
            print_text(ev.text, style=style, end="")
    if res is None:  # the stream ended without its result: the backend broke its protocol
        from l2reason.errors import BackendError

        raise BackendError("the backend's stream ended without a result")
    return res


def layer_stats(c: Any, top: int = 3) -> list[dict[str, Any]]:
    """Per captured layer of candidate ``c``: mean, p95 and max decode-token norm, and the top tokens by norm."""
    import numpy as np

    arr = c.norms.array()
    toks = c.tokens or []
    rows = []
    for i, layer in enumerate(c.norms.layers):
        col = arr[:, i]
        if col.size == 0:
            continue
        best = np.argsort(-col)[:top]
        rows.append(
            {
                "layer": layer,
                "mean": float(col.mean()),
                "p95": float(np.percentile(col, 95)),
                "max": float(col.max()),
                "top_tokens": [toks[j] if j < len(toks) else str(j) for j in best],
            }
        )
    return rows


def _summary_table(c: Any, title: str = "ℓ2 norms (decode tokens)") -> Table:
    t = table(title, ("layer", "mean", "p95", "max", "top tokens by norm"), right=("layer", "mean", "p95", "max"))
    for r in layer_stats(c):
        names = ", ".join(repr(tok) for tok in r["top_tokens"])
        t.add_row(str(r["layer"]), f"{r['mean']:.1f}", f"{r['p95']:.1f}", f"{r['max']:.1f}", text(names))
    return t


def _candidates_table(res: Any, select: str, score: str) -> Table:
    """Every candidate's score, length, finish reason and extracted answer; the chosen one marked."""
    from l2reason.eval.answers import extract_answer

    cols = ("#", "score", "tokens", "finish", "answer", "")
    t = table(f"candidates scored by {select}" + (f" ({score})" if select.startswith("l2") else ""), cols, right=cols)
    for cand, sc in zip(res.candidates, res.selection["scores"], strict=False):
        t.add_row(
            str(cand.index),
            "-" if sc is None else f"{sc:.4g}",
            str(cand.completion_tokens),
            cand.finish_reason,
            text(extract_answer(cand.text)),
            "◀ chosen" if cand.index == res.chosen_index else "",
        )
    return t


def _print_interventions(c: Any) -> None:
    for kind, rep in c.interventions.items():
        if kind == "alrr":
            console.print(
                f"[bold]ALRR[/bold] layers {rep['layers']}: active tokens {rep['active_tokens']}, "
                f"passes accepted {rep['passes_accepted']} of {rep['passes_tried']} over {rep['decode_steps']} steps",
                highlight=False,
            )
        elif kind == "erss":
            inj = rep["injections"]
            where = ", ".join(f"step {e['step']}@L{e['layer']} (cos {e['cos']:.2f})" for e in inj[:8])
            console.print(
                f"[bold]ERSS[/bold] ({rep['injection']}): {rep['fires']} triggers, {len(inj)} injections {where}",
                highlight=False,
            )
        else:
            console.print(text(f"{kind}", style="bold"), text(f": {rep}"), sep="")


def _ask_request(question: str, max_new_tokens: int, temperature: float, seed: int, **opts: Any) -> Any:
    """The request of ``ask``: ``select`` (with ``n``, ``score``), ``recurse`` and ``steer`` as given."""
    from l2reason.backends.base import GenerationRequest, NormSpec, SelectionSpec

    select = opts["select"]
    req = chat_request(question, max_new_tokens, temperature, seed)
    update: dict[str, Any] = {}
    ivs = [{"kind": k} for k, on in (("alrr", opts["recurse"]), ("erss", opts["steer"])) if on]
    if select:
        update["n"] = opts["n"]
        update["selection"] = SelectionSpec(method=select, score=opts["score"])
        update["logprobs"] = 5
        if select.startswith("l2-probe"):  # the probe reads every layer and the evaluation's top-20 logprobs
            update["norms"] = NormSpec(layers="all")
            update["logprobs"] = 20
    try:
        return GenerationRequest.build(**{**req.model_dump(), **update, "interventions": ivs})
    except Exception as e:
        raise fail(e) from e


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
    from l2reason.errors import L2ReasonError

    if select is not None and select not in SELECT_CHOICES:
        raise fail(f"unknown --select {select!r}; choose one of {', '.join(SELECT_CHOICES)}")
    temp = temperature if temperature is not None else (0.7 if select else 0.0)
    req = _ask_request(
        question, max_new_tokens, temp, seed, select=select, n=n, score=score, recurse=recurse, steer=steer
    )
    be = load_backend(model)
    streaming = stream and not as_json and not select and callable(getattr(be, "generate_stream", None))
    try:
        if streaming:
            console.rule("answer")
            res = _print_stream(be, req)
            console.print()
        else:
            res = be.generate(req)
    except L2ReasonError as e:
        raise fail(e) from e
    c = res.candidates[res.chosen_index]
    if as_json:
        print_json(res.model_dump_json())
        return
    if not streaming:
        console.rule(
            "answer" if not select else f"answer (candidate {res.chosen_index} of {len(res.candidates)}, by {select})"
        )
        print_text(c.text)
    console.rule()
    console.print(_summary_table(c))
    if select and res.selection:
        console.print(_candidates_table(res, select, score))
    _print_interventions(c)
    tps = res.completion_tokens / res.seconds if res.seconds else 0.0
    console.print(
        f"[dim]{res.completion_tokens} tokens ({c.finish_reason}) in {res.seconds:.1f}s, {tps:.1f} tok/s[/dim]"
    )


@app.command()
def trace(
    question: Annotated[str, typer.Argument(help="the question")],
    out: Annotated[Path, typer.Option("--out", "-o", help="heatmap image (.png/.svg/.pdf)")] = Path("norms.png"),
    html: Annotated[Path | None, typer.Option(help="HTML page (default: next to --out)")] = None,
    model: ModelOpt = "default",
    max_new_tokens: MaxNewOpt = 160,
    layers: Annotated[str, typer.Option(help="'all', 'band', or comma-separated indices")] = "all",
    as_json: JsonOpt = False,
) -> None:
    """Draw a layers x tokens heatmap of norms and an HTML page with tokens coloured by norm.

    --json prints the answer, the files written and each layer's norm summary as JSON instead.
    """
    from l2reason.files import check_output_file
    from l2reason.signal.band import default_band
    from l2reason.viz import norm_heatmap, norm_html

    check_output_file(out, "--out", (".png", ".svg", ".pdf"))  # before the model loads
    check_output_file(html or out.with_suffix(".html"), "--html")

    spec = parse_layers(layers)
    req = chat_request(question, max_new_tokens, 0.0, 0, layers=spec)
    be = load_backend(model)
    res = be.generate(req)
    c = res.candidates[0]
    if not as_json:
        print_text(c.text)
    png = norm_heatmap(c, out, title=f"{be.model_id}: ‖x‖ / layer median")
    band = [layer for layer in default_band(be.num_layers) if layer in c.norms.layers] or None
    page = norm_html(c, html or out.with_suffix(".html"), band=band, title=question[:80])
    if as_json:
        print_json(
            {
                "model_id": be.model_id,
                "text": c.text,
                "tokens": c.completion_tokens,
                "finish_reason": c.finish_reason,
                "heatmap": str(png),
                "html": str(page),
                "band": band,
                "layers": layer_stats(c),
            }
        )
        return
    console.print("wrote ", text(png, "bold"), " and ", text(page, "bold"), sep="")


def _demo_row(i: int, gold: str, c: Any, band: list[int]) -> tuple[list[Any], dict[str, Any]]:
    """One problem's summary-table cells and its record for ``answers.json``."""
    import numpy as np

    from l2reason.eval.answers import answers_equal, extract_answer

    arr = c.norms.array()
    b = arr[:, [c.norms.layers.index(layer) for layer in band]].mean(axis=1)
    pred = extract_answer(c.text)
    ok = answers_equal(pred, gold)
    p95 = float(np.percentile(b, 95)) if b.size else 0.0
    cells = [
        str(i),
        text(gold),
        text(pred),
        "✓" if ok else "✗",
        str(c.completion_tokens),
        f"{b.mean():.1f}",
        f"{p95:.1f}",
        str(int((b > p95).sum())),
    ]
    return cells, {"gold": gold, "pred": pred, "correct": ok, "text": c.text, "tokens": c.completion_tokens}


@app.command()
def demo(
    model: ModelOpt = "default",
    out: Annotated[Path, typer.Option(help="folder for the heatmap and HTML")] = Path("out/demo"),
    problems: Annotated[int, typer.Option(min=1, max=16)] = 3,
    max_new_tokens: MaxNewOpt = 200,
) -> None:
    """The main job: answer a few grade-school math problems, show norm summaries, write a heatmap."""
    from l2reason.data import PROBLEMS
    from l2reason.files import check_output_dir
    from l2reason.signal.band import default_band
    from l2reason.viz import norm_heatmap, norm_html

    check_output_dir(out, "--out")  # before the model loads
    be = load_backend(model)
    chosen = PROBLEMS[:problems]
    reqs = [chat_request(q, max_new_tokens, 0.0, 0, layers="all") for q, _ in chosen]
    t0 = time.perf_counter()
    with err.status(f"answering {len(reqs)} problems in one batch (greedy, ≤{max_new_tokens} tokens each)"):
        results = be.generate_many(reqs)
    secs = time.perf_counter() - t0
    band = default_band(be.num_layers)
    cols = ("#", "gold", "extracted", "ok", "tokens", "band mean ‖x‖", "band p95", "> p95")
    summary = table(
        f"{be.model_id}: answers and band-layer norms (band = layers {band[0]}..{band[-1]})",
        cols,
        right=cols,
        caption="> p95: the answer's tokens above the band p95 of that answer",
    )
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, ((question, gold), res) in enumerate(zip(chosen, results, strict=True), 1):
        c = res.candidates[0]
        console.rule(f"problem {i}")
        console.print(text(question, "bold"))
        print_text(c.text)
        cells, record = _demo_row(i, gold, c, band)
        summary.add_row(*cells)
        records.append({"question": question, **record})
        if i == 1:
            png = norm_heatmap(c, out / "norms.png", title=f"problem 1: ‖x‖ / layer median, all {be.num_layers} layers")
            page = norm_html(c, out / "norms.html", band=band, title=question)
    console.print(summary)
    ntok = sum(r["tokens"] for r in records)
    (out / "answers.json").write_text(json.dumps(records, indent=2))
    console.print(f"{ntok} tokens in {secs:.1f}s ({ntok / secs:.1f} tok/s batched)")
    console.print(
        "wrote ", text(png, "bold"), ", ", text(page, "bold"), " and ", text(out / "answers.json", "bold"), sep=""
    )
