"""An engine plugin server under load: many concurrent mixed requests, each checked against its solo run.

One plugin server (vLLM or SGLang, CPU, fp32) and one client
(:class:`~l2reason.backends.vllm.VLLMBackend` / :class:`~l2reason.backends.sglang.SGLangBackend`). First every
request *kind* runs alone, one after the other (its solo run). Then ``--requests`` requests, the kinds mixed in a
seeded shuffle, go out from ``--concurrency`` threads at once, so the server always has that many (more with n=8)
in flight, batched together and queued behind each other. Checked for every request:

- a valid request's candidates equal its solo run: the same text and tokens, and norms within ``rtol`` 1e-4
  (the bound the e2e tests use for batched vs single runs; the largest relative difference is reported, and how
  many were bit for bit equal);
- an invalid request gets its own error (the message matched) and disturbs nobody (the valid ones around it
  still equal their solo runs);
- nothing is lost: one outcome per request sent, no timeouts;
- the plugin's per-request slot table is back to its idle count at the end
  (:meth:`~l2reason.backends.engine_client.EngineClient.active_slots`; a plugin that does not report it yet is
  reported as "not reported");
- the server's memory (the resident set of its whole process tree) after the 1,000th request is within
  ``--rss-bound`` of what it was after the 100th.

Kinds (greedy unless said; raw prompts, ``--max-tokens`` tokens): plain (no norms), norms only (every layer),
ALRR, ERSS, static steering, n=8 selection (sampled with seeds, ``l2`` selection; greedy on SGLang, whose CPU
path ignores seeds), and invalid ones: layers the model lacks (refused by the client before sending), an SAE the server's folder does not hold, and settings the
plugin must refuse sent past the client's checks (a layer it lacks, text that is not JSON); and cancelled ones
(a 200-token ERSS request whose client gives up after 1 s and drops the connection: its slot must come back).

Usage:
    python benchmarks/engine_load.py --engine vllm [--requests 1000] [--concurrency 128] [--max-tokens 8]

Writes ``docs/results/engine_load/<engine>.md`` (and ``.json``): machine, versions, command, load average,
figures. Exits 1 when a check fails. The short version runs as a test
(``tests/integration/test_engine_load_faults.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common as common  # noqa: E402

RTOL = 1e-4  # batched vs solo norms: the e2e tests' bound (fp32; other batch shapes, other kernel blocking)
PROMPTS = common.PROMPTS[:4]


@dataclass(frozen=True)
class Kind:
    """One kind of request in the mix.

    Args:
        name: the kind's name in the figures.
        request: what the client sends.
        error: a regex the error's message must match (None: a valid request).
        raw_settings: the plugin settings sent as this text, past the client's checks (None: the client's own).
        cut_after: the client gives up after this many seconds and drops the connection (a cancelled request;
            one that finishes before is fine too).
    """

    name: str
    request: Any
    error: str | None = None
    raw_settings: str | None = None
    cut_after: float | None = None


#: whether the engine's CPU build honours per-candidate sampling seeds (SGLang's needs a GPU attention backend)
SEEDED = {"vllm": True, "sglang": False}


def kinds(
    num_layers: int, hidden: int, max_tokens: int, prompts: list[str] = PROMPTS, *, seeded: bool = True
) -> list[Kind]:
    """The request kinds: every valid one on every prompt, and the invalid ones on the first prompt.

    ``seeded=False`` makes the n=8 kind greedy: for an engine that does not honour per-candidate seeds (SGLang's
    CPU path, ``docs/sglang.md``), sampled candidates differ from call to call, so no run could equal its solo run.
    """
    from l2reason.backends.base import GenerationRequest, NormSpec, SamplingParams, SelectionSpec

    band = [num_layers - 6, num_layers - 4, num_layers - 2]
    greedy = SamplingParams(max_new_tokens=max_tokens, temperature=0.0, seed=0)
    sampled = SamplingParams(max_new_tokens=max_tokens, temperature=0.8 if seeded else 0.0, seed=7)
    every = NormSpec(layers="all", mask_massive=False)
    erss = {"kind": "erss", "layers": [band[-1]], "S": 2, "p": 1.0, "C": 1, "c_min": -1.0, "threshold": {"warmup": 2}}
    steer = {"kind": "static_steer", "vectors": {num_layers // 2: [0.05] * hidden}, "alpha": 4.0}
    valid = {
        "plain": {"norms": None},
        "norms": {"norms": every},
        "alrr": {"norms": NormSpec(layers=band), "interventions": [{"kind": "alrr"}]},
        "erss": {"norms": NormSpec(layers=band), "interventions": [erss]},
        "steer": {"norms": NormSpec(layers=band), "interventions": [steer]},
    }
    out: list[Kind] = []
    for i, p in enumerate(prompts):
        for name, kw in valid.items():
            out.append(
                Kind(f"{name}/p{i}", GenerationRequest(prompt=p, sampling=greedy, request_id=f"{name}/p{i}", **kw))
            )
        n8 = GenerationRequest(
            prompt=p, n=8, sampling=sampled, selection=SelectionSpec(method="l2"), request_id=f"n8/p{i}"
        )
        out.append(Kind(f"n8/p{i}", n8))
    p0 = prompts[0]
    sae = {"kind": "sae_ablate", "sae": "missing.safetensors", "layer": 1, "features": [1]}
    out += [
        Kind("bad-layers", GenerationRequest(prompt=p0, sampling=greedy, norms=NormSpec(layers=[num_layers + 75])),
             error=rf"layer|{num_layers + 75}"),
        Kind("bad-sae", GenerationRequest(prompt=p0, sampling=greedy, interventions=[sae]),
             error=r"plugin rejected the request: sae_ablate: no SAE named 'missing\.safetensors'"),
        Kind("raw-layer", GenerationRequest(prompt=p0, sampling=greedy), raw_settings='{"layers": [99]}',
             error=r"plugin rejected the request: layers \[99\] do not exist"),
        Kind("raw-not-json", GenerationRequest(prompt=p0, sampling=greedy), raw_settings="{not json",
             error=r"plugin rejected the request: invalid l2reason settings"),
        Kind("cancelled", GenerationRequest(prompt=p0, sampling=greedy.model_copy(update={"max_new_tokens": 200}),
                                            interventions=[erss]),
             error=r"sent no answer to \S+ within 1 s", cut_after=1.0),
    ]  # fmt: skip
    return out


def _with_settings(be: Any, item: dict[str, Any], text: str) -> dict[str, Any]:
    """``item`` (one engine payload) carrying the settings ``text`` as it is."""
    from l2reason.serving.settings import SETTINGS_KEY

    if be.name == "vllm":
        return {**item, "vllm_xargs": {SETTINGS_KEY: text}}
    return {**item, "sp": {**item["sp"], "custom_params": {SETTINGS_KEY: text}}}


def run_kind(be: Any, kind: Kind) -> Any:
    """Send one request of ``kind``: its result (raw settings go past the client's checks, as a bare client would)."""
    if kind.raw_settings is None and kind.cut_after is None:
        return be.generate(kind.request)
    req = kind.request
    p = be._prepare(req)  # the client's own payload (its settings replaced): what a foreign client sends
    items = (
        p["items"] if kind.raw_settings is None else [_with_settings(be, it, kind.raw_settings) for it in p["items"]]
    )
    outs = be._send([req], items, timeout=kind.cut_after)
    return [be._candidate(j, req, p, out) for j, out in enumerate(outs)]


def _candidates(result: Any) -> list[Any]:
    return result if isinstance(result, list) else result.candidates


def compare(got: Any, solo: Any) -> tuple[bool, float, bool]:
    """(same text and tokens with norms within :data:`RTOL`, the largest relative norm difference, bit for bit)."""
    import numpy as np

    same, worst, exact = True, 0.0, True
    for a, b in zip(_candidates(got), _candidates(solo), strict=True):
        same &= a.text == b.text and a.tokens == b.tokens
        if (a.norms is None) != (b.norms is None):
            same = exact = False
            continue
        if a.norms is None:
            continue
        x, y = a.norms.array(), b.norms.array()
        if x.shape != y.shape:
            same = exact = False
            continue
        rel = float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-12))) if x.size else 0.0
        worst = max(worst, rel)
        exact &= bool(np.array_equal(x, y))
    return same and worst <= RTOL, worst, exact and same


def tree_rss(pid: int) -> int:
    """The resident set (bytes) of process ``pid`` and all its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


@dataclass
class Load:
    """What one load run saw (filled by :func:`run_load`)."""

    sent: int = 0
    outcomes: list[tuple[str, str, Any]] = field(default_factory=list)  # (kind, "ok"/"error", result or message)
    rss: dict[int, int] = field(default_factory=dict)  # requests finished -> server tree RSS (bytes)
    peak_in_flight: int = 0
    seconds: float = 0.0


def run_load(
    be: Any, mix: list[Kind], requests: int, concurrency: int, server_pid: int | None, *, seed: int = 0
) -> Load:
    """Send ``requests`` requests drawn from ``mix`` (every kind as evenly as can be, seeded order) from
    ``concurrency`` threads; record each outcome and the server's RSS after every 100th finished request."""
    from l2reason.errors import L2ReasonError

    order = [mix[i % len(mix)] for i in range(requests)]
    random.Random(seed).shuffle(order)
    load, lock = Load(sent=len(order)), threading.Lock()
    in_flight = 0

    def one(kind: Kind) -> None:
        nonlocal in_flight
        with lock:
            in_flight += 1
            load.peak_in_flight = max(load.peak_in_flight, in_flight)
        try:
            outcome: tuple[str, str, Any] = (kind.name, "ok", run_kind(be, kind))
        except L2ReasonError as e:
            outcome = (kind.name, "error", f"{type(e).__name__}: {e}")
        except Exception as e:  # a crash is a finding, not the end of the run
            outcome = (kind.name, "crash", f"{type(e).__name__}: {e}")
        with lock:
            in_flight -= 1
            load.outcomes.append(outcome)
            done = len(load.outcomes)
        if server_pid is not None and (done % 100 == 0 or done == len(order)):
            load.rss[done] = tree_rss(server_pid)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, order))
    load.seconds = time.perf_counter() - t0
    return load


def judge(load: Load, solo: dict[str, Any], mix: list[Kind]) -> dict[str, Any]:
    """The figures of a load run: per kind, requests, equal to solo (and bit for bit), errors as expected."""
    import re

    by_name = {k.name: k for k in mix}
    per: dict[str, Counter[str]] = {}
    worst, problems = 0.0, []
    for name, status, value in load.outcomes:
        kind = by_name[name]
        c = per.setdefault(name.split("/")[0], Counter())
        c["requests"] += 1
        if kind.cut_after is not None and status == "ok":
            c["finished before the cut"] += 1
            continue
        if kind.error is not None:
            ok = status == "error" and re.search(kind.error, value) is not None
            c["error as expected" if ok else "WRONG"] += 1
            if not ok:
                problems.append(f"{name}: {status}: {str(value)[:300]}")
            continue
        if status != "ok":
            c["WRONG"] += 1
            problems.append(f"{name}: {status}: {str(value)[:300]}")
            continue
        same, rel, exact = compare(value, solo[name])
        worst = max(worst, rel)
        c["equal to solo" if same else "WRONG"] += 1
        c["bit for bit"] += int(exact)
        if not same:
            problems.append(f"{name}: differs from its solo run (largest relative norm difference {rel:.2e})")
    return {
        "per_kind": {k: dict(v) for k, v in sorted(per.items())},
        "largest_relative_norm_difference": worst,
        "lost": load.sent - len(load.outcomes),
        "problems": problems,
    }


def rss_check(rss: dict[int, int], bound: float) -> dict[str, Any]:
    """RSS after the 100th request, after the last, their ratio, and whether it is within ``1 + bound``."""
    if 100 not in rss or not rss:
        return {"checked": False}
    last = max(rss)
    ratio = rss[last] / rss[100]
    return {
        "checked": True,
        "after_100_mib": round(rss[100] / 2**20),
        "last": last,
        "after_last_mib": round(rss[last] / 2**20),
        "ratio": round(ratio, 4),
        "bound": 1 + bound,
        "within": ratio <= 1 + bound,
        "series_mib": {k: round(v / 2**20) for k, v in sorted(rss.items())},
    }


def make_server(engine: str, model: str, log_dir: Path, sae_dir: Path, max_seqs: int, *, eager: bool = False) -> Any:
    """A plugin server for ``engine`` (fp32, small context; vLLM ``eager`` skips compilation), not started yet."""
    log_dir.mkdir(parents=True, exist_ok=True)
    if engine == "vllm":
        from l2reason.backends.vllm.server import VLLMServer, free_port

        port = free_port()
        srv: Any = VLLMServer(
            model, port=port, dtype="float32", max_model_len=1024, max_num_seqs=max_seqs, sae_dir=sae_dir,
            eager=eager, log_path=log_dir / f"load-vllm-{port}.log",
        )  # fmt: skip
    else:
        from l2reason.backends.sglang.server import SGLangServer, free_port

        port = free_port()
        args = ["--dtype", "float32", "--context-length", "1024", "--max-running-requests", str(max_seqs)]
        srv = SGLangServer(
            model, port=port, device="cpu", extra_args=[*args, "--sae-dir", str(sae_dir)],
            log_path=log_dir / f"load-sglang-{port}.log",
        )  # fmt: skip
    return srv


def plugin_from(srv: Any, src: str | os.PathLike[str] | None) -> Any:
    """``srv`` set to run the l2reason package and its plugin from the source tree ``src`` (None: the installed
    ones): to measure a committed state (``git archive HEAD l2reason integrations | tar -x -C DIR``) while the
    working tree's plugins are being edited. The client stays this process's l2reason."""
    if src:
        engine = "vllm" if "vllm" in srv.launcher else "sglang"
        paths = [str(Path(src)), str(Path(src) / "integrations" / engine), srv.env.get("PYTHONPATH", "")]
        srv.env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return srv


def backend_for(engine: str, url: str, model: str, timeout: float) -> Any:
    """The engine's client (retries off: a request is sent once)."""
    if engine == "vllm":
        from l2reason.backends.vllm import VLLMBackend

        return VLLMBackend(url, model=model, timeout=timeout, retries=0, concurrency=8)
    from l2reason.backends.sglang import SGLangBackend

    return SGLangBackend(url, model=model, timeout=timeout, retries=0)


def solo_runs(be: Any, mix: list[Kind]) -> dict[str, Any]:
    """Every valid kind run alone, one after the other."""
    return {k.name: run_kind(be, k) for k in mix if k.error is None}


def measure(
    be: Any, server_pid: int | None, mix: list[Kind], requests: int, concurrency: int, bound: float,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:  # fmt: skip
    """Solo runs, the load, the slot count and the figures, as one dict (``ok``: every check held)."""
    idle = be.active_slots()
    t0 = time.perf_counter()
    solo = solo_runs(be, mix)
    log(f"solo runs of {len(solo)} kinds: {time.perf_counter() - t0:.0f} s; idle slots {idle}")
    load = run_load(be, mix, requests, concurrency, server_pid)
    log(f"load: {load.sent} requests in {load.seconds:.0f} s, peak {load.peak_in_flight} in flight")
    slots = be.active_slots()
    figures = judge(load, solo, mix)
    mem = rss_check(load.rss, bound)
    slots_ok = slots is None or slots == 0
    ok = not figures["problems"] and figures["lost"] == 0 and slots_ok and mem.get("within", True)
    return {
        "ok": ok,
        "requests": load.sent,
        "concurrency": concurrency,
        "peak_in_flight": load.peak_in_flight,
        "seconds": round(load.seconds, 1),
        "active_slots": {"idle": idle, "end": slots, "reported": slots is not None},
        "rss": mem,
        **figures,
    }


def report_lines(engine: str, res: dict[str, Any], env: dict[str, Any], info: dict[str, str]) -> list[str]:
    """The Markdown report of one engine's load run."""
    slots = res["active_slots"]
    slot_line = (
        f"{slots['end']} at the end (idle before the load: {slots['idle']})"
        if slots["reported"]
        else "not reported (the plugin does not pass `active_slots` to `caps()` yet)"
    )
    mem = res["rss"]
    lines = common.report_head(
        f"{engine} plugin server under load",
        info,
        f"Date: {info['date']}  ",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in env.items()),
        "",
        f"**{'All checks held' if res['ok'] else 'A CHECK FAILED'}.** {res['requests']} requests from "
        f"{res['concurrency']} threads (peak {res['peak_in_flight']} requests in flight, n=8 ones as 8 completions) "
        f"in {res['seconds']} s; lost: {res['lost']}; plugin slots: {slot_line}; largest relative norm difference "
        f"vs the solo runs: {res['largest_relative_norm_difference']:.2e} (bound {RTOL:g}).",
        "",
        "| kind | requests | equal to solo | of those bit for bit | error as expected | wrong |",
        "|---|---:|---:|---:|---:|---:|",
    )
    for k, c in res["per_kind"].items():
        lines.append(
            f"| {k} | {c.get('requests', 0)} | {c.get('equal to solo', '–')} | {c.get('bit for bit', '–')} | "
            f"{c.get('error as expected', '–')} | {c.get('WRONG', 0)} |"
        )
    if mem.get("checked"):
        lines += [
            "",
            f"Server memory (RSS of its process tree): {mem['after_100_mib']} MiB after 100 requests, "
            f"{mem['after_last_mib']} MiB after {mem['last']}; ratio {mem['ratio']} (bound {mem['bound']}: "
            f"{'within' if mem['within'] else 'OUTSIDE'}). Every 100 requests (MiB): "
            + ", ".join(f"{k}: {v}" for k, v in mem["series_mib"].items()),
        ]
    if res["problems"]:
        lines += ["", "Problems:", "", *[f"- {p}" for p in res["problems"][:50]]]
    return [*lines, ""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["vllm", "sglang"], required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--max-seqs", type=int, default=64, help="the server's most requests decoded together")
    ap.add_argument("--eager", action="store_true", help="vLLM: --enforce-eager (no compilation; starts faster)")
    ap.add_argument(
        "--plugin-from",
        default=os.environ.get("L2REASON_PLUGIN_FROM"),
        help="run the server's l2reason and plugin from this source tree (default $L2REASON_PLUGIN_FROM; none: the "
        "installed ones)",
    )
    ap.add_argument("--rss-bound", type=float, default=0.10, help="RSS after the last / after the 100th <= 1 + this")
    ap.add_argument("--timeout", type=float, default=1800.0, help="the client's timeout for one call (seconds)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "engine_load"))
    args = ap.parse_args()

    def log(s: str) -> None:
        print(time.strftime("%H:%M:%S"), s, flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still stops the server (finally)
    info = common.run_info()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as sae_dir:
        srv = make_server(
            args.engine, args.model, ROOT / "out" / "test-logs", Path(sae_dir), args.max_seqs, eager=args.eager
        )
        plugin_from(srv, args.plugin_from)
        try:
            srv.start(timeout=1800)
            log(f"{args.engine} server ready in {srv.ready_seconds:.0f} s")
            be = backend_for(args.engine, srv.url, args.model, args.timeout)
            mix = kinds(be.num_layers, be.hidden_size, args.max_tokens, seeded=SEEDED[args.engine])
            res = measure(be, srv.proc.pid, mix, args.requests, args.concurrency, args.rss_bound, log)
            python = srv.python
        finally:
            srv.stop()
    engine_v, torch_v, tf_v = common.engine_versions(python, args.engine)
    env = {
        "cpu": common.cpu_model(),
        "cores": os.cpu_count(),
        args.engine: engine_v,
        "torch": torch_v,
        "transformers": tf_v,
        "model": f"{args.model} (fp32{', eager' if args.eager and args.engine == 'vllm' else ''})",
        "max tokens": args.max_tokens,
        "load average (1 min) before / after": f"{load_before[0]:.1f} / {os.getloadavg()[0]:.1f}",
        "server code": f"from {args.plugin_from}" if args.plugin_from else "the installed plugin",
    }
    res["env"] = env
    res["kinds"] = [k.name for k in mix]
    md = common.write_report(Path(args.out) / args.engine, res, report_lines(args.engine, res, env, info))
    log(f"{'ok' if res['ok'] else 'FAILED'}: {md}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
