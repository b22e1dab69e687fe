"""Start and stop an SGLang server with the l2reason plugin (``l2reason serve``, and the end-to-end tests).

SGLang pins its own torch and transformers, so it lives in its own virtual
environment; this module only builds the command that runs that
environment's Python (``python -m l2reason_sglang.launch …``). Starting it as a
child process, waiting until the server answers and stopping it again are
:class:`~l2reason.backends.engine_server.EngineServer`'s, shared with vLLM. Which
Python: ``python=`` or ``$L2REASON_SGLANG_PYTHON``, else ``.venv-sglang/bin/python``
in the current folder (what ``make sglang`` creates).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from l2reason.backends.engine_server import (
    EngineServer,
    engine_python,
    free_port,
    launcher_command,
    resolve_model_path,
)

__all__ = ["SGLangServer", "free_port", "resolve_model_path", "sglang_python"]


def sglang_python(python: str | os.PathLike[str] | None = None) -> Path:
    """The Python of SGLang's environment (with ``l2reason_sglang`` installed)."""
    return engine_python(python, "SGLang", "sglang", needs="sglang==0.5.23 and the l2reason-sglang plugin")


class SGLangServer(EngineServer):
    """An SGLang server with the l2reason plugin, as a child process (a context manager).

    Args:
        model: a packaged name (``"default"``), a folder or a hub id.
        port: the port (default: a free one).
        host: the address to bind.
        device: ``"cpu"`` (SGLang's torch-native CPU path; slow, for trying it
            out and for tests) or ``"cuda"``.
        tp, dp: tensor- and data-parallel sizes.
        extra_args: more ``sglang.launch_server`` flags, passed through.
        python: the SGLang environment's Python.
        log_path: where the server's output goes (kept after it stops).
        plugin: False starts stock SGLang (no plugin) — for comparisons.

    Example:
        >>> with SGLangServer("default", device="cpu") as srv:  # doctest: +SKIP
        ...     backend = SGLangBackend(srv.url)
    """

    engine = "SGLang"  # in messages
    ready_path = "/model_info"  # answers once the server can generate
    log_name = "sglang"  # the default log: sglang-<port>.log

    def __init__(
        self,
        model: str = "default",
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        device: str = "cuda",
        tp: int = 1,
        dp: int = 1,
        extra_args: list[str] | None = None,
        python: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        plugin: bool = True,
    ) -> None:
        self.model_path = resolve_model_path(model)
        self.python = sglang_python(python)
        self.plugin = plugin
        port = port or free_port()
        args = ["--model-path", self.model_path, "--host", host, "--port", str(port), "--device", device]
        if tp != 1:
            args += ["--tp-size", str(tp)]
        if dp != 1:
            args += ["--dp-size", str(dp)]
        args += list(extra_args or [])
        # the plugin's launcher also starts stock SGLang (same CPU set-up) for comparisons
        cmd = launcher_command(self.python, "l2reason_sglang.launch", args, plugin=plugin)
        super().__init__(cmd, port=port, host=host, log_path=log_path)

    def generate(self, payload: dict[str, Any], timeout: float = 600.0) -> Any:
        """POST a raw native ``/generate`` payload (for tests and benchmarks)."""
        return self._post("/generate", payload, timeout)
