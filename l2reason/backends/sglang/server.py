"""Start and stop an SGLang server with the l2reason plugin (``l2reason serve``, and the end-to-end tests).

SGLang pins its own torch and transformers, so it lives in its own virtual
environment; this module only runs that environment's Python
(``python -m l2reason_sglang.launch …``) as a child process, waits until the
server answers, checks that the plugin is loaded, and stops it again. Which
Python: ``python=`` or ``$L2REASON_SGLANG_PYTHON``, else ``.venv-sglang/bin/python``
in the current folder (what ``make sglang`` creates).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from l2reason.errors import BackendError, ConfigError

log = logging.getLogger(__name__)

__all__ = ["SGLangServer", "free_port", "resolve_model_path", "sglang_python"]


def sglang_python(python: str | os.PathLike[str] | None = None) -> Path:
    """The Python of SGLang's environment (with ``l2reason_sglang`` installed)."""
    cand = python or os.environ.get("L2REASON_SGLANG_PYTHON") or ".venv-sglang/bin/python"
    p = Path(cand)
    if not p.is_file():
        raise ConfigError(
            f"no SGLang environment at {p}: create it with `make sglang` (or pass --python / set "
            "L2REASON_SGLANG_PYTHON to a Python with sglang==0.5.23 and the l2reason-sglang plugin)"
        )
    return p


def resolve_model_path(model: str) -> str:
    """A model spec as SGLang takes it: packaged names become their converted safetensors folder."""
    from l2reason.models.registry import find_packaged

    pm = find_packaged(model)
    if pm is None:
        return model  # a folder or a hub id: SGLang resolves it
    from l2reason.models.load import convert_packaged

    return str(convert_packaged(pm))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SGLangServer:
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
        self.host, self.port = host, port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.log_path = Path(log_path) if log_path else Path(f"sglang-{self.port}.log")
        args = ["--model-path", self.model_path, "--host", host, "--port", str(self.port), "--device", device]
        if tp != 1:
            args += ["--tp-size", str(tp)]
        if dp != 1:
            args += ["--dp-size", str(dp)]
        args += list(extra_args or [])
        self.plugin = plugin
        # the plugin's launcher also starts stock SGLang (same CPU set-up) for comparisons
        self.cmd = [str(self.python), "-m", "l2reason_sglang.launch", *args]
        if not plugin:
            self.cmd.append("--no-l2reason-plugin")
        self.env = dict(os.environ)
        self.proc: subprocess.Popen[bytes] | None = None

    # ---- life cycle -----------------------------------------------------
    def start(self, timeout: float = 600.0) -> SGLangServer:
        """Start the server and wait until it generates; raise with the log's tail if it does not."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "wb")  # noqa: SIM115  (kept open for the child's lifetime)
        log.info("starting %s: %s (log: %s)", self.engine, " ".join(self.cmd), self.log_path)
        self.proc = subprocess.Popen(
            self.cmd, stdout=logf, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        logf.close()
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise BackendError(
                    f"{self.engine} exited with code {self.proc.returncode} while starting:\n{self.log_tail()}"
                )
            if self._ready():
                self.ready_seconds = time.monotonic() - t0
                log.info("%s ready at %s after %.0f s", self.engine, self.url, self.ready_seconds)
                return self
            time.sleep(2.0)
        self.stop()
        raise BackendError(f"{self.engine} did not become ready within {timeout:.0f} s:\n{self.log_tail()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.ready_path, timeout=5) as r:
                json.loads(r.read())
            return True
        except (urllib.error.URLError, ConnectionError, OSError, ValueError):
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server and all its child processes."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(line[:500] for line in text[-lines:])

    def __enter__(self) -> SGLangServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def generate(self, payload: dict[str, Any], timeout: float = 600.0) -> Any:
        """POST a raw native ``/generate`` payload (for tests and benchmarks)."""
        req = urllib.request.Request(
            self.url + "/generate", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
