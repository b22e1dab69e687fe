"""Start, wait for and stop an engine's server as a child process: what SGLang's and vLLM's launchers share.

SGLang and vLLM pin their own torch and transformers, so each lives in its own
virtual environment and l2reason runs it as a child process of this one.
:class:`EngineServer` is that process's life cycle, the same for every engine:
start the command in a session of its own (so stopping it reaches every process
the engine spawns) with its output in a log file, poll one HTTP route until it
answers JSON, raise :class:`~l2reason.errors.BackendError` with the log's tail
when the process exits or the time runs out, and stop the whole process group
(SIGTERM, then SIGKILL). :class:`PluginServer` adds what starting an engine
through its plugin launcher (``python -m l2reason_sglang.launch``, ``python -m
l2reason_vllm.launch``, run in the engine's environment) takes: the model's
folder, the environment's Python, a port, the common flags;
:class:`~l2reason.backends.sglang.server.SGLangServer` and
:class:`~l2reason.backends.vllm.server.VLLMServer` only add their engine's own
flags. Nothing here imports an engine.
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from l2reason.errors import BackendError, ConfigError
from l2reason.serving.launch import NO_PLUGIN_FLAG, exec_launch, flag_value

log = logging.getLogger(__name__)

__all__ = [
    "NO_PLUGIN_FLAG",
    "EngineServer",
    "PluginServer",
    "engine_python",
    "exec_launch",
    "flag_value",
    "free_port",
    "launcher_command",
    "resolve_model_path",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resolve_model_path(model: str) -> str:
    """A model spec as an engine takes it: packaged names become their converted safetensors folder."""
    from l2reason.models.registry import find_packaged

    pm = find_packaged(model)
    if pm is None:
        return model  # a folder or a hub id: the engine resolves it
    from l2reason.models.load import convert_packaged

    return str(convert_packaged(pm))


def engine_python(python: str | os.PathLike[str] | None, engine: str, make_target: str, needs: str) -> Path:
    """The Python of an engine's environment: ``python``, else ``$L2REASON_<MAKE_TARGET>_PYTHON``, else
    ``.venv-<make_target>/bin/python`` in the current folder (what ``make <make_target>`` creates).

    Raises:
        ConfigError: there is no such file; the message says how to create the environment.
    """
    env_var = f"L2REASON_{make_target.upper()}_PYTHON"
    p = Path(python or os.environ.get(env_var) or f".venv-{make_target}/bin/python")
    if not p.is_file() or not os.access(p, os.X_OK):
        raise ConfigError(
            f"no {engine} environment at {p}: create it with `make {make_target}` (or pass --python / set "
            f"{env_var} to a Python with {needs})"
        )
    return p


def launcher_command(
    python: str | os.PathLike[str], module: str, args: Sequence[str], *, plugin: bool = True
) -> list[str]:
    """``<python> -m <module> <args>``, plus :data:`NO_PLUGIN_FLAG` when ``plugin`` is False."""
    return [str(python), "-m", module, *args, *([] if plugin else [NO_PLUGIN_FLAG])]


class EngineServer:
    """A server as a child process (a context manager): start it, wait until it answers, stop it.

    Subclasses set :attr:`engine` (the name in messages), :attr:`ready_path`
    (a GET route that answers JSON once the server can serve) and
    :attr:`log_name`, and build the command line.

    Args:
        cmd: the command line; it must make the server listen on ``host:port``.
        port: the port it listens on (:func:`free_port` finds a free one).
        host: the address it binds.
        log_path: where its output goes (default ``<log_name>-<port>.log``; kept after it stops).
        env: its environment (default: a copy of this process's).

    Example:
        >>> srv = EngineServer(["python", "-m", "http.server", "8000"], port=8000)  # doctest: +SKIP
        >>> with srv:  # doctest: +SKIP
        ...     pass
    """

    engine = "the server"  # in messages
    ready_path = "/health"  # answers JSON once the server can serve
    log_name = "server"  # the default log file is <log_name>-<port>.log
    poll_seconds = 2.0  # between two readiness checks
    ready_seconds: float  # how long start() waited (set once the server is ready)

    def __init__(
        self,
        cmd: Sequence[str | os.PathLike[str]],
        *,
        port: int,
        host: str = "127.0.0.1",
        log_path: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.cmd = [str(c) for c in cmd]
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}"
        self.log_path = Path(log_path) if log_path else Path(f"{self.log_name}-{port}.log")
        self.env = dict(os.environ if env is None else env)
        self.proc: subprocess.Popen[bytes] | None = None

    # ---- life cycle -----------------------------------------------------
    def start(self, timeout: float = 600.0) -> Self:
        """Start the server and wait until it answers; raise with the log's tail if it does not."""
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
            time.sleep(self.poll_seconds)
        self.stop()
        raise BackendError(
            f"{self.engine} did not become ready within {timeout:.0f} s (start-up is mostly loading and compiling, "
            "which takes longer on a busy CPU: give it more time, e.g. start_timeout=1800 in a vllm:<model>?… spec, "
            f"or skip compilation with eager):\n{self.log_tail()}"
        )

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
        """The log's last ``lines`` lines (each cut to 500 characters), or ``(no log)``."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(line[:500] for line in text[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _post(self, path: str, payload: Any, timeout: float) -> Any:
        """POST ``payload`` as JSON to ``path``; the decoded JSON answer."""
        req = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())


class PluginServer(EngineServer):
    """An engine's server started through l2reason's plugin launcher (``python -m <launcher> …``).

    What SGLang's and vLLM's launchers share: the model (packaged names become their converted folder), the
    engine environment's Python, a free port unless one is given, and the command line
    ``<python> -m <launcher> <model_flag> <model> --host H --port P <engine_args> <extra_args>``
    (plus :data:`NO_PLUGIN_FLAG` for the stock engine). Subclasses set :attr:`launcher` and :attr:`model_flag`
    and pass their engine's own flags.

    Args:
        model: a packaged name (``"default"``), a folder or a hub id.
        engine_args: the engine's own flags (after ``--port``).
        python: the engine environment's Python (see :func:`engine_python`).
        port: the port (None: a free one).
        host: the address to bind.
        extra_args: more engine flags, passed through after ``engine_args``.
        log_path: where the server's output goes (kept after it stops).
        plugin: False starts the stock engine (no plugin), for comparisons.

    Example:
        >>> with SGLangServer("default", device="cpu") as srv:  # doctest: +SKIP
        ...     srv.cmd[:3]
        ['.venv-sglang/bin/python', '-m', 'l2reason_sglang.launch']
    """

    launcher = ""  # the plugin's launcher module
    model_flag = "--model"  # the engine's flag that names the model

    def __init__(
        self,
        model: str,
        engine_args: Sequence[str],
        *,
        python: Path,
        port: int | None,
        host: str,
        extra_args: Sequence[str] | None,
        log_path: str | os.PathLike[str] | None,
        plugin: bool,
    ) -> None:
        self.model_path = resolve_model_path(model)
        self.python = python
        self.plugin = plugin
        port = port or free_port()
        args = [self.model_flag, self.model_path, "--host", host, "--port", str(port), *engine_args]
        cmd = launcher_command(python, self.launcher, [*args, *(extra_args or [])], plugin=plugin)
        super().__init__(cmd, port=port, host=host, log_path=log_path)
