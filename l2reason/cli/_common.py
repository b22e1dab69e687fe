"""What every ``l2reason`` command shares: the app and its error mapping, the consoles, model loading.

Conventions of the command line:

- stdout (:data:`console`) carries results, stderr (:data:`err`) progress, status lines and errors, so the
  ``--json`` output of a command is the whole of its stdout and parses as JSON.
- Model text (answers, tokens, extracted answers) and other data (paths, questions, error messages) are
  printed verbatim, never through rich's markup: :func:`print_text` and :func:`text` wrap them in
  :class:`rich.text.Text`, so ``\\[ 3 \\times 18 = 54 \\]`` or ``[bold]`` print as they are and ``:smile:``
  stays text. Markup is used only in our own fixed strings.
- Every user mistake (an error l2reason raises on purpose, a pydantic error, a bad path, a file that is not
  UTF-8) ends as ``error: ...`` on stderr with exit code 2, in one place (:class:`_Group`); a bug keeps
  its traceback.
- Tables fit 80 columns (:func:`table`): long values go below a table, not into a column.

The command modules import from here and never from one another; tests point model loading at a tiny model
by patching :func:`l2reason.backends.shared.make_backend`, which :func:`load_backend` calls.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Annotated, Any

import typer
import typer.core
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

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


def fail(message: object) -> typer.Exit:
    """Print ``error: <message>`` (verbatim) on stderr; return the exit (code 2) for the caller to raise."""
    err.print(f"[red]error:[/red] {escape(str(message))}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


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
            raise fail(msg) from e


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    help="l2reason: the ℓ2 norm of an LLM's residual stream as a signal for reasoning.",
)


def version() -> str:
    """The installed l2reason version (``"0"`` in a source checkout that was never installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("l2reason")
    except PackageNotFoundError:
        return "0"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"l2reason {version()}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="print the version and exit"),
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
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
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON (nothing else on stdout)")]


def load_backend(model: str) -> Any:
    """Load (or connect to) ``model`` with a status line on stderr; a bad spec is ``error: ...``, exit 2."""
    from l2reason.backends.shared import is_server_spec, make_backend
    from l2reason.errors import L2ReasonError

    what = (
        f"connecting to {model}"
        if is_server_spec(model)
        else f"loading {model} (the first time, the packaged model is assembled and converted: ~1 min)"
    )
    t0 = time.perf_counter()
    with err.status(escape(what)):
        try:
            be = make_backend(model)
        except L2ReasonError as e:
            raise fail(e) from e
    err.print(
        Text(
            f"model {be.model_id} ({be.name}): {be.num_layers} layers x {be.hidden_size}, "
            f"ready in {time.perf_counter() - t0:.1f}s",
            style="dim",
        )
    )
    return be


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads (None: leave torch's choice); return the number in use."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def chat_request(
    question: str, max_new_tokens: int, temperature: float, seed: int, layers: Any = "band", system: bool = True
) -> Any:
    """A one-question chat request (with the built-in system prompt) that captures ``layers``' norms."""
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
        raise fail(e) from e


def parse_layers(text: str) -> Any:
    """``all``, ``band`` or comma-separated ints (each once), checked before any model loads."""
    from l2reason.errors import LayerError

    t = text.strip()
    if t in ("all", "band"):
        return t
    parts = [x.strip() for x in t.split(",")]
    if not t or any(not p for p in parts):
        raise LayerError(f"--layers {text!r}: give 'all', 'band' or comma-separated layer indices such as 18,19,20")
    try:
        out = [int(p) for p in parts]
    except ValueError:
        raise LayerError(
            f"--layers {text!r}: {', '.join(p for p in parts if not p.lstrip('-').isdigit())} is not a layer index; "
            "give 'all', 'band' or comma-separated integers"
        ) from None
    if len(set(out)) != len(out):
        raise LayerError(f"--layers {text!r} names a layer twice; give each layer once")
    return out


def text(value: object, style: str | None = None) -> Text:
    """``value`` as rich text that prints verbatim (no markup, no emoji codes, no highlighting)."""
    return Text(str(value), style=style or "")


def print_text(value: str, *, style: str | None = None, end: str = "\n") -> None:
    """Print model text on stdout exactly as it is: no markup, no emoji, no re-wrapping."""
    console.print(text(value, style), end=end, soft_wrap=True)


def print_json(data: Any) -> None:
    """Print ``data`` (JSON-serialisable, or a JSON string) as indented JSON on stdout."""
    console.print_json(data if isinstance(data, str) else json.dumps(data), highlight=False)


def table(title: str, columns: Sequence[str], *, right: Sequence[str] = (), **kw: Any) -> Table:
    """A table with ``columns`` (those in ``right`` right-aligned) in the compact style that fits 80 columns.

    The title and a ``caption`` print verbatim; cells that hold data should be :func:`text`.
    """
    if isinstance(kw.get("caption"), str):
        kw["caption"] = escape(kw["caption"])
    t = Table(title=escape(title), box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, show_edge=False, **kw)
    for col in columns:
        t.add_column(col, justify="right" if col in right else "left")
    return t


def progress() -> Progress:
    """A progress bar on stderr (description, bar, done/total, elapsed, remaining)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
    )
