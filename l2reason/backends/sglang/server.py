"""Start and stop an SGLang server with the l2reason plugin (``l2reason serve``, and the end-to-end tests).

SGLang pins its own torch and transformers, so it lives in its own virtual
environment; this module only builds the command that runs that
environment's Python (``python -m l2reason_sglang.launch …``). Starting it as a
child process, waiting until the server answers and stopping it again are
:class:`~l2reason.backends.engine_server.PluginServer`'s, shared with vLLM. Which
Python: ``python=`` or ``$L2REASON_SGLANG_PYTHON``, else ``.venv-sglang/bin/python``
in the current folder (what ``make sglang`` creates).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from l2reason.backends.engine_server import PluginServer, engine_python, free_port, resolve_model_path

__all__ = ["SGLangServer", "free_port", "resolve_model_path", "sglang_python"]


def sglang_python(python: str | os.PathLike[str] | None = None) -> Path:
    """The Python of SGLang's environment (with ``l2reason_sglang`` installed)."""
    return engine_python(python, "SGLang", "sglang", needs="sglang==0.5.23 and the l2reason-sglang plugin")


class SGLangServer(PluginServer):
    """An SGLang server with the l2reason plugin, as a child process (a context manager).

    Args:
        device: ``"cpu"`` (SGLang's torch-native CPU path; slow, for trying it
            out and for tests) or ``"cuda"``.
        tp, dp: tensor- and data-parallel sizes.
        extra_args: more ``sglang.launch_server`` flags, passed through.
        python: the SGLang environment's Python (:func:`sglang_python`).
        model, port, host, log_path, plugin: as in
            :class:`~l2reason.backends.engine_server.PluginServer` (``plugin=False``: stock SGLang).

    Example:
        >>> with SGLangServer("default", device="cpu") as srv:  # doctest: +SKIP
        ...     backend = SGLangBackend(srv.url)
    """

    engine = "SGLang"  # in messages
    ready_path = "/model_info"  # answers once the server can generate
    log_name = "sglang"  # the default log: sglang-<port>.log
    launcher = "l2reason_sglang.launch"  # also starts stock SGLang (same CPU set-up) for comparisons
    model_flag = "--model-path"

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
        args = ["--device", device]
        if tp != 1:
            args += ["--tp-size", str(tp)]
        if dp != 1:
            args += ["--dp-size", str(dp)]
        super().__init__(
            model, args, python=sglang_python(python), port=port, host=host, extra_args=extra_args,
            log_path=log_path, plugin=plugin,
        )  # fmt: skip

    def generate(self, payload: dict[str, Any], timeout: float = 600.0) -> Any:
        """POST a raw native ``/generate`` payload (for tests and benchmarks)."""
        return self._post("/generate", payload, timeout)
