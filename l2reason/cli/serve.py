"""``l2reason serve``: start SGLang or vLLM with the l2reason plugin and wait until Ctrl-C."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from l2reason.cli._common import ModelOpt, app, console, err, fail, text


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
    tp: Annotated[
        int, typer.Option(min=1, help="tensor-parallel size (GPUs per replica; on a CPU, ranks with a core list each)")
    ] = 1,
    dp: Annotated[int, typer.Option(min=1, help="SGLang: data-parallel replicas behind its DP controller")] = 1,
    python: Annotated[str | None, typer.Option(help="the engine environment's Python (default .venv-<engine>)")] = None,
    log: Annotated[Path | None, typer.Option(help="server log file (default <engine>-server.log)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the server to be ready")] = 900.0,
    sae_dir: Annotated[
        Path | None,
        typer.Option(
            "--sae-dir",
            help="the one folder the server reads SAE files from, by name (sae_ablate requests; none: refused)",
        ),
    ] = None,
) -> None:
    """Start SGLang or vLLM with the l2reason plugin; extra arguments go to the engine's server.

    Example: l2reason serve -m default --device cpu -- --context-length 2048
    Example: l2reason serve -m default --engine vllm -- --max-model-len 2048
    """
    from l2reason.errors import L2ReasonError

    if engine not in ("sglang", "vllm"):
        raise fail(f"--engine must be 'sglang' or 'vllm' (got {engine!r})")
    extra = [a for a in ctx.args if a != "--"]
    log = log or Path(f"{engine}-server.log")
    if sae_dir is not None:
        if not sae_dir.is_dir():
            raise typer.BadParameter(f"--sae-dir {sae_dir}: not a folder")
        extra = ["--sae-dir", str(sae_dir.resolve()), *extra]
    server: Any
    Client: Any
    try:
        if engine == "vllm":
            from l2reason.backends.vllm import VLLMBackend as Client
            from l2reason.backends.vllm.server import VLLMServer

            if dp != 1:  # docs/vllm.md, "Scale-out": vLLM's own --data-parallel-size is not verified with the plugin
                raise typer.BadParameter(
                    "--dp is SGLang's; for vLLM run one server per replica (or pass vLLM's --data-parallel-size "
                    "after --, not verified with the plugin: docs/vllm.md, Scale-out)"
                )
            server = VLLMServer(model, port=port, host=host, tp=tp, extra_args=extra, python=python, log_path=log)
        else:
            from l2reason.backends.sglang import SGLangBackend as Client
            from l2reason.backends.sglang.server import SGLangServer

            server = SGLangServer(
                model, port=port, host=host, device=device, tp=tp, dp=dp, extra_args=extra, python=python, log_path=log
            )
        with err.status(text(f"starting {server.engine} with the l2reason plugin on {server.url} (log: {log})")):
            server.start(timeout=timeout)
            be = Client(server.url)  # the plugin self-check: per-token norms must come back
    except L2ReasonError as e:
        raise fail(e) from e
    _print_ready(server, be, f"{engine}://{host}:{port}")
    try:
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(1.0)
        code = server.proc.returncode if server.proc else "?"
        err.print(text(f"the server exited (code {code})", "red"), text(f"; log: {log}"), sep="")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def _print_ready(server: Any, be: Any, spec: str) -> None:
    """Say the server is up, and how the CLI, DSPy and Python reach it (``spec``: ``<engine>://host:port``)."""
    console.print(
        text(f"l2reason + {server.engine} ready", "green"),
        text(f" at {server.url} ({be.model_id}, {be.num_layers} layers)"),
        sep="",
    )
    for line in (
        f"  CLI:    l2reason ask '2+2?' --model {spec}",
        f"  DSPy:   l2reason.configure_dspy({spec!r})",
        f"  Python: {type(be).__name__}({spec!r})",
        "Ctrl-C stops the server.",
    ):
        console.print(text(line))
