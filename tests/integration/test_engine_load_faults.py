"""Engine plugin servers under load and faults (real vLLM / SGLang CPU servers; the short versions).

- **Load** (each engine): :mod:`benchmarks.engine_load` with 160 requests from 128 threads, every kind mixed
  (plain, norms, ALRR, ERSS, steering, n=8 selection, invalid ones, cancelled ones): every valid request equals
  its solo run, every invalid one gets its error, nothing is lost, and the plugin holds no slot at the end.
  The 1,000-request run with the memory check is the benchmark itself (``docs/results/engine_load``).
- **Faults** (vLLM, eager, the packaged ``fast`` model): ``l2reason eval`` against a server killed with SIGKILL
  mid-run exits with a clear ``error:`` line within seconds and keeps every finished item; after a restart the
  same command resumes and completes with each item stored once; a server restarted with another model is
  refused on resume; a request whose client drops the connection gives its slot back.

Server logs are kept in ``out/test-logs``. Needs ``make vllm`` / ``make sglang``. ``$L2REASON_PLUGIN_FROM`` (a
source tree) runs the servers' l2reason and plugin from there (:func:`benchmarks.engine_load.plugin_from`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from engine_e2e import LOGS

from benchmarks import engine_load

pytestmark = [pytest.mark.real]

ITEMS = 8  # the fault test's evaluation items (chain_sum, greedy, 48 tokens each)


def wait_slots(be, want: int = 0, seconds: float = 60.0) -> int | None:
    """The plugin's slot count once it is ``want`` (or the last count after ``seconds``; None: not reported)."""
    deadline = time.monotonic() + seconds
    while True:
        n = be.active_slots()
        if n is None or n == want or time.monotonic() > deadline:
            return n
        time.sleep(1.0)


@pytest.mark.parametrize(
    "engine", [pytest.param("vllm", marks=pytest.mark.vllm), pytest.param("sglang", marks=pytest.mark.sglang)]
)
def test_a_server_under_mixed_concurrent_load(engine, tmp_path):
    srv = engine_load.make_server(engine, "default", LOGS, tmp_path, max_seqs=64, eager=True)
    engine_load.plugin_from(srv, os.environ.get("L2REASON_PLUGIN_FROM"))
    try:
        srv.start(timeout=1800)
        be = engine_load.backend_for(engine, srv.url, "default", timeout=900.0)
        mix = engine_load.kinds(be.num_layers, be.hidden_size, max_tokens=4, seeded=engine_load.SEEDED[engine])
        res = engine_load.measure(be, srv.proc.pid, mix, requests=160, concurrency=128, bound=10.0)
    finally:
        srv.stop()
    assert res["problems"] == [] and res["lost"] == 0
    assert res["peak_in_flight"] >= 100  # 128 threads, most requests queued in the server at once
    kinds = res["per_kind"]
    assert all(c.get("equal to solo", 0) == c["requests"] for k, c in kinds.items() if k in {"plain", "norms", "alrr"})
    assert kinds["raw-layer"]["error as expected"] == kinds["raw-layer"]["requests"] > 0
    slots = res["active_slots"]
    if slots["reported"]:
        assert slots["idle"] == slots["end"] == 0
    assert res["ok"]


# ---- faults: kill, restart, another model, a dropped connection (vLLM) ------------------------------------------
def vllm_server(model: str, port: int):
    from l2reason.backends.vllm.server import VLLMServer

    # eager: the faults are the client's and the harness's, not the compiled graph's; eager starts in a third
    srv = VLLMServer(
        model, port=port, dtype="float32", max_model_len=512, max_num_seqs=8, eager=True,
        log_path=LOGS / f"faults-{model}-{port}.log",
    )  # fmt: skip
    return engine_load.plugin_from(srv, os.environ.get("L2REASON_PLUGIN_FROM"))


def eval_cmd(port: int, run_dir: Path, limit: int = ITEMS) -> list[str]:
    return [
        sys.executable, "-m", "l2reason.cli", "eval", "--model", f"vllm://127.0.0.1:{port}", "--dataset", "chain_sum",
        "--limit", str(limit), "-n", "0", "--methods", "none", "--gen-methods", "greedy", "-t", "48",
        "--batch-items", "1", "--out", str(run_dir), "--no-report",
    ]  # fmt: skip


def stored(run_dir: Path) -> list[str]:
    path = run_dir / "gen" / "greedy.jsonl"
    return path.read_text().splitlines() if path.is_file() else []


def kill_mid_eval(port: int, run_dir: Path, srv) -> tuple[subprocess.CompletedProcess[str], float, list[str]]:
    """Start ``l2reason eval``; once 3 items are stored, SIGKILL the server's process group. Returns the eval's
    outcome, the seconds from the kill to its exit, and the lines stored then."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(eval_cmd(port, run_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 600
    while len(stored(run_dir)) < 3:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "eval stored fewer than 3 items in 10 min"
        time.sleep(0.2)
    os.killpg(srv.proc.pid, signal.SIGKILL)
    t_kill = time.monotonic()
    out, err = proc.communicate(timeout=120)
    srv.proc.wait(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.monotonic() - t_kill, stored(run_dir)


@pytest.mark.vllm
def test_eval_survives_a_killed_server_and_refuses_another_model(tmp_path):
    from l2reason.backends.engine_server import free_port
    from l2reason.backends.vllm import VLLMBackend

    port, run_dir = free_port(), tmp_path / "run"
    srv = vllm_server("fast", port)
    try:
        srv.start(timeout=1800)
        done, seconds, kept = kill_mid_eval(port, run_dir, srv)
    finally:
        srv.stop()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "error: the connection to the vLLM server" in done.stderr or "error: cannot reach" in done.stderr
    assert seconds < 30  # the client's timeout is an hour: the error comes from the dropped connection
    ids = [json.loads(x)["item_id"] for x in kept]
    assert 3 <= len(ids) < ITEMS and len(set(ids)) == len(ids)

    # restarted: the same command resumes and stores only what is missing
    srv = vllm_server("fast", port)
    try:
        srv.start(timeout=1800)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        again = subprocess.run(eval_cmd(port, run_dir), capture_output=True, text=True, env=env, timeout=900)
        assert again.returncode == 0, again.stderr[-3000:]
        be = VLLMBackend(srv.url)
        cancelled_slot_check(be, srv)
    finally:
        srv.stop()
    after = stored(run_dir)
    assert after[: len(kept)] == kept
    ids = [json.loads(x)["item_id"] for x in after]
    assert len(ids) == ITEMS == len(set(ids))

    # restarted with another model: the resume is refused, nothing is written
    srv = vllm_server("default", port)
    try:
        srv.start(timeout=1800)
        refused = subprocess.run(eval_cmd(port, run_dir), capture_output=True, text=True, env=env, timeout=600)
    finally:
        srv.stop()
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "model_id: stored" in refused.stderr and "start it with that model again" in refused.stderr
    assert stored(run_dir) == after


def cancelled_slot_check(be, srv) -> None:
    """A request whose client drops the connection after 2 s gives its slot back (and vLLM runs nothing)."""
    assert wait_slots(be) in (0, None)
    body = {"model": be._served_name, "prompt": "Count from 1 to 500:", "max_tokens": 400, "temperature": 0.0}
    body["vllm_xargs"] = {"l2reason": json.dumps({"layers": [5], "interventions": [{"kind": "alrr"}]})}
    body["ignore_eos"] = True
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(srv.url + "/v1/completions", json=body, timeout=httpx.Timeout(2.0, connect=10.0))
    assert wait_slots(be) in (0, None)
    running = None
    for _ in range(60):
        metrics = httpx.get(srv.url + "/metrics", timeout=10).text
        running = [ln for ln in metrics.splitlines() if ln.startswith("vllm:num_requests_running")]
        if running and all(float(ln.rsplit(" ", 1)[1]) == 0 for ln in running):
            break
        time.sleep(1.0)
    assert running and all(float(ln.rsplit(" ", 1)[1]) == 0 for ln in running), running
