"""Scale-out end to end (issue 26): the plugins with more than one rank or replica, against one, on CPU.

- **vLLM, tensor parallel 2** (CPU build, one core per rank: ``l2reason_vllm.launch`` sets
  ``VLLM_CPU_OMP_THREADS_BIND=0|1`` on a one-NUMA-node machine): a TP=2 and a TP=1 plugin server (fp32,
  eager) get the same requests, all in one batch: greedy tokens equal, every layer's norm equal within
  fp32 tolerance, ALRR / ERSS (injections firing) / static steering give the same text and reports; a
  steered and a plain request batched together equal their runs alone; one record per token (the
  connector keeps one rank's records and logs when the ranks' records differ: the log must not say so).
- **SGLang, data parallel 2** (``l2reason serve --engine sglang --dp 2``: SGLang's own DP controller,
  round-robin): an n=8 request lands on both replicas and gives every candidate the same tokens and norms
  as one replica, and the same selection. Then the same request through SGLang's router (the model
  gateway, package ``smg``, round-robin over the DP=2 server and the one-replica server) with
  ``SGLangBackend`` pointed at the router (it detects the router and sends one ``/generate`` per
  candidate): the candidates land on all three replicas and equal the one replica's. A
  replica killed mid-run gives its requests a clear error (or the client's timeout) while the other
  replica's requests complete.

Not in the CI subset (``L2REASON_REAL=ci``): the servers alone take 3-10 min to start on 2 shared cores.
Run: ``L2REASON_REAL=1 .venv/bin/python -m pytest -q
tests/integration/test_scaleout.py -p no:cacheprovider`` (``docs/results/scaleout/README.md`` has the
figures of a run). Each test writes its figures to ``out/test-logs/scaleout/<test>.json``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_e2e import LOGS, PROMPTS, Q, serving

from l2reason.backends.base import GenerationRequest, Message, SamplingParams, SelectionSpec
from l2reason.serving import SETTINGS_KEY, TOKEN_KEY, EngineSettings

pytestmark = [pytest.mark.real]

FIGURES = LOGS / "scaleout"
#: fp32 norms, TP=2 against TP=1 / a DP replica against one replica: the sums run in another order
#: (row-parallel partial sums + all-reduce; other batch shapes), nothing else may differ
RTOL, ATOL = 1e-4, 1e-4

ERSS = {"kind": "erss", "layers": [20], "S": 2, "p": 1.0, "C": 1, "c_min": -1.0, "threshold": {"warmup": 2}}
STEER = {"kind": "static_steer", "vectors": {12: [0.05] * 896}, "alpha": 4.0}
#: the requests both vLLM servers get (each on both prompts): name -> settings
SETTINGS = {
    "norms": EngineSettings(layers=list(range(24))),
    "alrr": EngineSettings(layers=[20, 23], interventions=[{"kind": "alrr", "mode": "static", "layers": [23]}]),
    "erss": EngineSettings(layers=[12, 20], interventions=[ERSS], seed=5),
    "steer": EngineSettings(layers=[12, 20], interventions=[STEER]),
}
MAX_NEW = 10
#: what the vLLM plugin's connector logs when two ranks' records differ (``l2reason_vllm.connector.TP_DISAGREE``)
TP_DISAGREE = "l2reason: tensor-parallel ranks returned different records"


def save(name: str, figures: dict[str, Any]) -> None:
    """Write a test's figures (what ``docs/results/scaleout/README.md`` quotes) to :data:`FIGURES`."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / f"{name}.json").write_text(json.dumps(figures, indent=1, default=str))


def started(make: Callable[[int, int], Any], sizes: tuple[int, ...]) -> Iterator[tuple[Any, ...]]:
    """Servers ``make(size, port)`` for each of ``sizes``, started together (start-up is mostly loading), stopped
    after the ``yield``."""
    from l2reason.backends.engine_server import free_port

    with serving(*(make(size, free_port()) for size in sizes), timeout=1200) as made:
        yield made


def diff(a: Any, b: Any) -> dict[str, float]:
    """Largest absolute and relative difference between two arrays of norms."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = np.abs(a - b)
    return {"max_abs": float(d.max(initial=0.0)), "max_rel": float((d / np.maximum(np.abs(b), 1e-12)).max(initial=0))}


def same_report(a: Any, b: Any, rel: float = 1e-3) -> bool:
    """Reports equal: the same keys, counts and decisions; floats within ``rel`` (they come from the norms)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_report(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_report(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-6)
    return bool(a == b)


# ---- vLLM: tensor parallel 2 against 1 ----------------------------------------------------------------------


def vllm_raw(server: Any, prompt: str, settings: EngineSettings) -> dict[str, Any]:
    body = {"model": server.model_path, "prompt": prompt, "max_tokens": MAX_NEW, "temperature": 0.0}
    body.update(return_token_ids=True, vllm_xargs={SETTINGS_KEY: settings.encode()[SETTINGS_KEY]})
    out = server.complete(body)
    c = out["choices"][0]
    return {"ids": c["token_ids"], "text": c["text"], "recs": (out.get("kv_transfer_params") or {}).get(TOKEN_KEY)}


def report(run: dict[str, Any]) -> Any:
    """The intervention report of a vLLM run (its last record that carries one)."""
    return next((r["r"] for r in reversed(run["recs"]) if "r" in r), None)


def failed(run: dict[str, Any]) -> list[Any]:
    """A vLLM run's error records (``{"e": ...}``: a token whose record the step could not fill)."""
    return [r["e"] for r in run["recs"] or [] if "e" in r]


@pytest.mark.vllm
class TestVLLMTensorParallel:
    @pytest.fixture(scope="class")
    def servers(self):
        """A TP=1 and a TP=2 plugin server (fp32, eager: compiling TP=2 takes ~9 min here), started together."""
        from l2reason.backends.vllm.server import VLLMServer

        def make(tp: int, port: int) -> Any:
            srv = VLLMServer(
                "default", port=port, tp=tp, dtype="float32", max_model_len=1024, max_num_seqs=16, eager=True,
                log_path=LOGS / f"vllm-tp{tp}-{port}.log",
            )  # fmt: skip
            srv.env["VLLM_CPU_KVCACHE_SPACE"] = "1"
            return srv

        yield from started(make, (1, 2))

    @pytest.fixture(scope="class")
    def runs(self, servers):
        """Every (setting, prompt) request sent to both servers at once (one batch per server), then on TP=2 the
        steered and the plain request alone."""
        jobs = [(tp, name, i) for tp in (1, 2) for name in SETTINGS for i in range(len(PROMPTS))]
        t0 = time.monotonic()
        with ThreadPoolExecutor(len(jobs)) as pool:
            futs = {j: pool.submit(vllm_raw, servers[j[0] - 1], PROMPTS[j[2]], SETTINGS[j[1]]) for j in jobs}
            out = {j: f.result() for j, f in futs.items()}
        batched_s = time.monotonic() - t0
        alone = {name: vllm_raw(servers[1], PROMPTS[0], SETTINGS[name]) for name in ("steer", "norms")}
        return out, alone, batched_s

    def test_tp2_tokens_norms_and_reports_equal_tp1(self, servers, runs):
        """Compared where both servers filled the token's record; error records (the plugin could not fill a
        token) are counted in the figures and fail the test at the end, after the comparison."""
        out, _, batched_s = runs
        figures: dict[str, Any] = {"batched_seconds": round(batched_s, 1), "tolerance": [RTOL, ATOL]}
        errors: dict[str, list[Any]] = {}
        for name in SETTINGS:
            for i in range(len(PROMPTS)):
                a, b = out[(1, name, i)], out[(2, name, i)]
                assert a["ids"] == b["ids"] and a["text"] == b["text"], (name, i)
                for tp, r in ((1, a), (2, b)):  # one record per token, every layer asked for
                    assert len(r["recs"]) == len(r["ids"]) > 0
                    assert all(len(x["n"]) == len(SETTINGS[name].layers) for x in r["recs"] if "e" not in x)
                    if failed(r):
                        errors[f"tp{tp}/{name}/{i}"] = failed(r)
                both = [(x["n"], y["n"]) for x, y in zip(a["recs"], b["recs"], strict=True) if "n" in x and "n" in y]
                na, nb = [x for x, _ in both], [y for _, y in both]
                figures[f"{name}/{i}"] = {"tokens": len(a["ids"]), "compared": len(both), **diff(nb, na)}
                np.testing.assert_allclose(nb, na, rtol=RTOL, atol=ATOL)
                if name != "norms":
                    ra, rb = report(a), report(b)
                    assert same_report(ra, rb), (name, i, ra, rb)
                    figures[f"{name}/{i}"]["report"] = rb
        figures["error_records"] = errors
        save("vllm_tp2_vs_tp1", figures)
        reps = {name: report(out[(2, name, 0)]) for name in ("alrr", "erss", "steer")}
        steps = {name: len(out[(2, name, 0)]["ids"]) - 1 for name in reps}  # decode steps
        assert reps["alrr"]["alrr"]["passes_accepted"] == [steps["alrr"]]  # static: every decode step re-ran
        assert reps["erss"]["erss"]["fires"] > 0
        assert reps["steer"]["static_steer"]["steered_tokens"] == steps["steer"]
        # steering at layer 12 moved the stream at layer 20 (the text of 10 greedy tokens may stay the same)
        steered = [r["n"][1] for r in out[(2, "steer", 0)]["recs"][1:] if "n" in r]
        plain = [r["n"][20] for r in out[(2, "norms", 0)]["recs"][1:] if "n" in r]
        assert steered and max(abs(x - y) / abs(y) for x, y in zip(steered, plain, strict=False)) > 1e-3
        assert not errors, f"the plugin left tokens without a record: {errors}"

    def test_tp2_batched_steered_and_plain_requests_equal_their_runs_alone(self, runs):
        out, alone, _ = runs
        for name in ("steer", "norms"):
            together, by_itself = out[(2, name, 0)], alone[name]
            assert not failed(together) and not failed(by_itself), (name, failed(together), failed(by_itself))
            assert together["ids"] == by_itself["ids"], name
            n1, n2 = [x["n"] for x in together["recs"]], [x["n"] for x in by_itself["recs"]]
            np.testing.assert_allclose(n1, n2, rtol=RTOL, atol=ATOL)
        assert "r" not in alone["norms"]["recs"][-1]  # the plain request got no intervention report

    def test_tp2_ranks_agreed_on_every_record(self, servers, runs):
        log = Path(servers[1].log_path).read_text(errors="replace")
        assert "tensor_parallel_size=2" in log or "'tensor_parallel_size': 2" in log
        assert "local_rank=1, core ids=" in log  # one core list per rank (the launcher's binding)
        assert TP_DISAGREE not in log


# ---- SGLang: data parallel 2, and a router in front -------------------------------------------------------

SGL_ARGS = ["--dtype", "float32", "--context-length", "2048", "--max-total-tokens", "8192"]
#: n=8 candidates, greedy; ERSS at p=0.5 gives each candidate (its own seed) its own injections, hence its own
#: text, reproducibly (SGLang's CPU path has no reproducible *sampling*)
ERSS_HALF = {**ERSS, "p": 0.5, "beta": 0.5}


def router(python: str, workers: list[str], *extra: str) -> Any:
    """The SGLang model gateway (``python -m smg.launch_router``, package ``smg``, the successor of
    ``sglang-router``) in front of ``workers``, round-robin, as an
    :class:`~l2reason.backends.engine_server.EngineServer` (not started)."""
    from l2reason.backends.engine_server import EngineServer, free_port

    port, metrics = free_port(), free_port()
    cmd = [python, "-m", "smg.launch_router", "--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin"]
    cmd += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics), "--worker-urls", *workers, *extra]
    srv = EngineServer(cmd, port=port, log_path=LOGS / f"router-{port}.log")
    srv.engine, srv.ready_path = "the SGLang model gateway", "/get_model_info"
    return srv


def wait_workers(rt: Any, n: int, timeout: float = 120.0) -> None:
    """Wait until the gateway lists ``n`` healthy workers (it answers before it has registered them all)."""
    import urllib.request

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with urllib.request.urlopen(rt.url + "/workers", timeout=10) as r:
            workers = json.loads(r.read()).get("workers") or []
            if sum(1 for w in workers if w.get("is_healthy", True)) >= n:
                return
        time.sleep(1.0)
    raise AssertionError(f"the gateway did not register {n} workers within {timeout:.0f} s")


def posts(server: Any) -> int:
    """How many ``/generate`` calls a server's log shows as answered so far."""
    return Path(server.log_path).read_bytes().count(b"POST /generate")


def sgl_one(url: str, ids: list[int], seed: int, max_new: int = 16, timeout: float = 900.0) -> dict[str, Any]:
    """One candidate as one native ``/generate`` call (one prompt, one ``sampling_params`` map): what a router
    forwards. Returns tokens, text and norms (or the HTTP error's text)."""
    import urllib.error
    import urllib.request

    s = EngineSettings(layers=[12, 20, 23], interventions=[ERSS_HALF], seed=seed)
    sp = {"temperature": 0.0, "max_new_tokens": max_new, "custom_params": s.encode()}
    body = json.dumps({"input_ids": ids, "sampling_params": sp}).encode()
    req = urllib.request.Request(url + "/generate", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            out = json.loads(r.read())
    except urllib.error.HTTPError as e:
        return {"error": f"HTTP {e.code}: {e.read().decode(errors='replace')[:300]}"}
    except (urllib.error.URLError, OSError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    recs = out["meta_info"].get(TOKEN_KEY) or []
    return {"ids": out["output_ids"], "text": out["text"], "n": [r["n"] for r in recs], "r": recs[-1].get("r")}


def scheduler_pid(server: Any, title: str) -> int:
    """The pid of ``server``'s process whose title contains ``title`` (e.g. ``scheduler_DP1``)."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getpgid(int(d.name)) == server.proc.pid and title in (d / "cmdline").read_text():
                    return int(d.name)
            except (OSError, ProcessLookupError):
                continue
    raise AssertionError(f"no process {title!r} in the server's process group")


def ranks_seen(server: Any, start: int) -> list[str]:
    """The DP ranks (``DP0``, ``DP1``) that logged a batch in ``server``'s log after byte ``start``."""
    lines = Path(server.log_path).read_bytes()[start:].decode(errors="replace").splitlines()
    return sorted(dp for dp in ("DP0", "DP1") if any(dp in ln and "batch" in ln for ln in lines))


def same_as_one_replica(r: Any, r1: Any, figures: dict[str, Any], name: str, key: str) -> None:
    """Every candidate of ``r`` equals the one replica's (``r1``: text, tokens, report, norms within tolerance), and
    so does the selection: the same index, or a tie within that tolerance (two candidates whose ``l2`` scores
    differ by less than the norms may). The figures are saved (``save(name, ...)``) before anything is asserted."""
    pairs = list(zip(r.candidates, r1.candidates, strict=True))
    for j, (a, b) in enumerate(pairs):
        same = a.text == b.text and a.completion_tokens == b.completion_tokens
        figures[f"candidate/{j}"] = {
            "tokens": a.completion_tokens,
            "same_text": same,
            **diff(a.norms.array(), b.norms.array()),
        }
    (i, s), (i1, s1) = ((x.selection["index"], x.selection["scores"]) for x in (r, r1))
    figures["selection"] = {key: i, "one": i1, f"{key}_scores": s, "one_scores": s1}
    save(name, figures)
    assert len({c.text for c in r1.candidates}) > 1  # the candidates differ (their own ERSS draws)
    for j, (a, b) in enumerate(pairs):
        assert a.text == b.text and a.completion_tokens == b.completion_tokens, j
        assert same_report(a.interventions, b.interventions), j
        np.testing.assert_allclose(a.norms.array(), b.norms.array(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(s, s1, rtol=RTOL, atol=ATOL)
    assert i == i1 or math.isclose(s1[i], s1[i1], rel_tol=RTOL, abs_tol=ATOL), (i, i1, s1)


#: n=8 candidates, greedy, 16 tokens, each with its own ERSS draws (its own seed), l2 selection
N8 = GenerationRequest(
    messages=[Message(role="user", content=Q)],
    n=8,
    sampling=SamplingParams(max_new_tokens=16, temperature=0.0, seed=0),
    interventions=[ERSS_HALF],
    selection=SelectionSpec(method="l2"),
)


@pytest.mark.sglang
class TestSGLangDataParallel:
    @pytest.fixture(scope="class")
    def servers(self):
        """``--dp 2`` (two replicas, SGLang's DP controller, round-robin) and one replica, started together."""
        from l2reason.backends.sglang.server import SGLangServer

        def make(dp: int, port: int) -> Any:
            log = LOGS / f"sglang-dp{dp}-{port}.log"
            return SGLangServer("default", port=port, device="cpu", dp=dp, extra_args=SGL_ARGS, log_path=log)

        yield from started(make, (2, 1))

    @pytest.fixture(scope="class")
    def one_replica(self, servers):
        """:data:`N8` on the one-replica server, as one batched ``/generate`` (8 prompts): the reference."""
        from l2reason.backends.sglang import SGLangBackend

        be = SGLangBackend(servers[1].url, model="default", timeout=1800)
        assert be.per_candidate is False
        return be.generate(N8)

    def test_n8_on_dp2_lands_on_both_replicas_and_equals_one_replica(self, servers, one_replica):
        from l2reason.backends.sglang import SGLangBackend

        dp2, _ = servers
        start = Path(dp2.log_path).stat().st_size
        r2 = SGLangBackend(dp2.url, model="default", timeout=1800).generate(N8)
        ranks = ranks_seen(dp2, start)
        assert ranks == ["DP0", "DP1"], "the 8 candidates did not run on both replicas"
        figures: dict[str, Any] = {"replicas_seen": ranks, "tolerance": [RTOL, ATOL]}
        same_as_one_replica(r2, one_replica, figures, "sglang_dp2_vs_one", "dp2")

    def test_n8_through_the_router_lands_on_every_replica_and_equals_one_replica(self, servers, one_replica):
        """The gateway round-robins 8 single-candidate calls over its 2 workers (4 each); the DP=2 server's own
        controller spreads its 4 over its two ranks. (Not ``--dp-aware``: smg 1.13.0 then forwards
        ``/get_model_info`` to the rank-suffixed worker URL, ``http://host:port@0``, and fails: HTTP 500
        ``call_upstream_connection_failed`` or 403 ``resolve_deny``; see ``docs/sglang.md``.)"""
        from l2reason.backends.sglang import SGLangBackend

        dp2, one = servers
        with router(str(dp2.python), [dp2.url, one.url]) as rt:
            wait_workers(rt, 2)
            be = SGLangBackend(rt.url, model="default", timeout=1800)  # its probe goes through the router too
            assert be.per_candidate is True and be.model_info_path == "/get_model_info"
            start, before = Path(dp2.log_path).stat().st_size, [posts(dp2), posts(one)]
            t0 = time.monotonic()
            r = be.generate(N8)
            seconds = time.monotonic() - t0
        calls = [posts(dp2) - before[0], posts(one) - before[1]]
        ranks = ranks_seen(dp2, start)
        figures: dict[str, Any] = {"calls_per_server": calls, "dp2_ranks_seen": ranks, "seconds": round(seconds, 1)}
        figures.update(one_replica_seconds=round(one_replica.seconds, 1), tolerance=[RTOL, ATOL])
        assert calls == [4, 4], f"round-robin over the two servers: {calls}"
        assert ranks == ["DP0", "DP1"], "the DP=2 server's calls did not run on both of its ranks"
        same_as_one_replica(r, one_replica, figures, "sglang_router_vs_one", "router")

    def test_a_replica_killed_mid_run_fails_its_requests_clearly_and_the_others_complete(self, servers):
        """Last test of the class (it kills a replica): 6 calls of 48 tokens, round-robin over the two replicas
        of the DP=2 server; replica DP1's scheduler is killed (SIGKILL: a crash) while they decode."""
        dp2, one = servers
        from l2reason.backends.sglang import SGLangBackend

        ids = SGLangBackend(one.url, model="default").tokenizer(PROMPTS[1])["input_ids"]
        with ThreadPoolExecutor(6) as pool:
            futs = []
            for j in range(6):
                futs.append(pool.submit(sgl_one, dp2.url, ids, j, 48, 300.0))
                time.sleep(0.3)
            time.sleep(15.0)  # every call is decoding by now (48 tokens take far longer)
            os.kill(scheduler_pid(dp2, "scheduler_DP1"), signal.SIGKILL)
            t0 = time.monotonic()
            got = [f.result() for f in futs]
            waited = time.monotonic() - t0
        errors = [g["error"] for g in got if "error" in g]
        done = [g for g in got if "error" not in g]
        save("sglang_dp2_replica_killed", {"errors": errors, "completed": len(done), "seconds_after_kill": waited})
        assert done and all(len(g["ids"]) == 48 and len(g["n"]) == 48 for g in done)  # the other replica's
        assert errors  # the killed replica's requests fail (or time out), they do not hang the client
