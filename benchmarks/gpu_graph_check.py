"""GPU check of the graph-safe ℓ2 step (``docs/graph_step.md``): capture once, replay a continuous batch, time it.

One call, meant to finish in well under 8 minutes on one H100:

1. **Equality.** A stand-in decoder of Qwen2.5-1.5B's shape (28 layers ×
   1536, SiLU-gated MLP of width 8960, bf16, random weights; attention is
   left out, so every token is computed on its own: the step only needs
   each layer's ``(o, r)``) runs a continuous-batching schedule of 40+ steps
   (64 tokens per step; requests join with a prefill, decode, leave; slots
   are reused; every intervention alone and combined; plain requests and
   padding in the batch) three ways: (a) ``graph_step`` eagerly, (b) the
   whole forward captured ONCE per variant (with and without ALRR re-runs)
   in a ``torch.cuda.CUDAGraph`` at start-up, with inert tables, and
   replayed while requests come and go, (c) the reference ``SlotRuntime``.
   (a) and (b) must be bit-equal; (a) against (c) is reported.
2. **Timing.** Per decode batch B ∈ {1, 8, 64}: CUDA-graph replay of the
   forward without the step (plain), with norm capture only
   (``kinds=[]``), with every intervention compiled in (a mix of requests)
   and with the ALRR variant; the per-layer cost is (t − t_plain) / 28.
   Also one eager (uncaptured) forward, to show what the graph saves.
3. **Inductor.** One layer's step with every kind, ``torch.compile``d
   (inductor) and captured, against the same step captured eagerly: the
   per-layer time, and the largest difference of one step's output.

``--dry-run`` does the same on the CPU with tiny sizes and no CUDA graph
(``make_fx`` traces the forward once instead; timing runs eagerly; the
compiled step uses ``aot_eager``); ``tests/unit/test_gpu_check_dryrun.py`` runs it.

It needs torch and the repository (and the repository's own dependencies:
the device image has no pydantic, so carry its wheels, see ``docs/graph_step.md``).

    python benchmarks/gpu_graph_check.py --out DIR
    python benchmarks/gpu_graph_check.py --dry-run --out DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from l2reason.serving.graph import SlotTables, check, graph_step  # noqa: E402
from l2reason.serving.graph.check import StandIn, eager_forward  # noqa: E402
from l2reason.serving.settings import EngineSettings  # noqa: E402
from l2reason.signal.band import resolve_layers  # noqa: E402

REAL = {
    "layers": 28,
    "hidden": 1536,
    "inter": 8960,
    "dtype": torch.bfloat16,
    "tokens": 64,
    "batches": (1, 8, 64),
    "rounds": 2,
}
DRY = {"layers": 3, "hidden": 16, "inter": 24, "dtype": torch.float32, "tokens": 16, "batches": (1, 4), "rounds": 1}


class Captured:
    """``fn(x) -> y`` recorded once with a static input buffer; a call copies ``x`` in and replays.

    ``mode``: ``"cuda"`` (a ``torch.cuda.CUDAGraph``, after two warm-up runs on a side stream), ``"fx"``
    (``make_fx``: the CPU stand-in for a capture) or ``"eager"`` (no capture; for the CPU dry run's timing).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, mode: str) -> None:
        self.mode, self.fn, self.x = mode, fn, example.clone()
        if mode == "cuda":
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    fn(self.x)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.y = fn(self.x)
        elif mode == "fx":
            from torch.fx.experimental.proxy_tensor import make_fx

            self.gm = make_fx(fn)(self.x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        if self.mode == "cuda":
            self.graph.replay()
            return self.y
        return self.gm(self.x) if self.mode == "fx" else self.fn(self.x)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _ms(fn: Callable[[], Any], dev: torch.device, iters: int) -> float:
    """Median wall time of ``fn`` in ms (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        _sync(dev)
        t = time.perf_counter()
        fn()
        _sync(dev)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _forward(model: StandIn, tables: SlotTables, alrr: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The stand-in's forward with the step after every layer, one variant (a one-argument function to capture)."""
    fwd = eager_forward(model, tables)
    return lambda x: fwd(x, alrr)


def new_tables(model: StandIn, num_slots: int, tokens: int, *, timing: bool = False, **kw: Any) -> SlotTables:
    """Tables for the equality run (ALRR as ``mixed_requests`` asks: layers 0 and the band, K=2) or, with
    ``timing``, for the paper's ALRR (the band, K=1)."""
    band = resolve_layers("band", model.num_layers)
    alrr, passes = (band, 1) if timing else (sorted({0, *band}), 2)
    return SlotTables(model.info, num_slots=num_slots, max_tokens=tokens, alrr_layers=alrr, alrr_passes=passes, **kw)


def equality(model: StandIn, sz: dict[str, Any], mode: str, out: dict[str, Any]) -> None:
    """Part 1: eager step vs captured-once replay vs the reference runtime, on one schedule."""
    L, d, T, S = model.num_layers, model.hidden_size, sz["tokens"], 17
    steps = check.schedule(check.mixed_requests(L, d, rounds=sz["rounds"]), num_slots=S, tokens=T, hidden=d, seed=1)
    t0 = time.perf_counter()
    eager_t = new_tables(model, S, T)
    eager = check.run_tables(model, steps, eager_t, eager_forward(model, eager_t))
    graph_t = new_tables(model, S, T)  # inert while captured
    example = torch.zeros(T, d, device=model.device, dtype=model.dtype)
    caps = {alrr: Captured(_forward(model, graph_t, bool(alrr)), example, mode) for alrr in (0, 1)}
    replay = check.run_tables(model, steps, graph_t, lambda x, alrr: caps[int(alrr)](x).clone())
    ref = check.run_reference(model, steps, num_slots=S)
    g, r = check.compare(eager, replay), check.compare(ref, eager)
    for c in (g, r):
        c.pop("first_record_diff")
    out["equality"] = {
        "steps": len(steps),
        "capture": mode,
        "replay_vs_eager": g,
        "eager_vs_reference": r,
        "ok": g["streams_equal"] and g["records_equal"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print("equality", json.dumps(out["equality"]), flush=True)


def _timing_settings(L: int, d: int, i: int, cfg: str) -> EngineSettings:
    band = resolve_layers("band", L)
    if cfg == "norms":
        return EngineSettings(layers=band, seed=i)
    steer = {"kind": "static_steer", "vectors": {band[0]: [0.01] * d}}
    mix = [[], [steer], [{"kind": "suppress", "target": "random"}], [{"kind": "erss"}]]
    mix += [[{"kind": "erss"}, {"kind": "suppress"}]] + (
        [[{"kind": "alrr", "layers": [band[0]]}]] if cfg == "alrr" else []
    )
    return EngineSettings(layers=band, interventions=mix[i % len(mix)], seed=i)


def timing(model: StandIn, sz: dict[str, Any], mode: str, out: dict[str, Any]) -> None:
    """Part 2: replay time of the forward per batch size: plain, norms only, every kind, the ALRR variant."""
    dev, L, d = model.device, model.num_layers, model.hidden_size
    iters = 30 if dev.type == "cuda" else 3
    res: dict[str, Any] = {}
    for B in sz["batches"]:
        x = torch.randn(B, d, device=dev, generator=torch.Generator(device=dev).manual_seed(B)).to(model.dtype)

        def plain(h: torch.Tensor) -> torch.Tensor:
            for layer in range(L):
                h = model.mlp(layer, h) + h
            return h

        row = {"plain_ms": _ms(lambda f=Captured(plain, x, mode), x=x: f(x), dev, iters)}
        for cfg in ("norms", "all", "alrr"):
            tables = new_tables(model, B + 1, B, timing=True, kinds=[] if cfg == "norms" else None, erss_rows=B)
            f = Captured(_forward(model, tables, cfg == "alrr"), x, mode)
            for i in range(B):  # requests join after the capture: their settings are table rows
                err = tables.admit(i + 1, _timing_settings(L, d, i, cfg))
                assert err is None, err
            tables.bind_step(torch.arange(1, B + 1, device=dev), decode=True)
            row[f"{cfg}_ms"] = _ms(lambda f=f, x=x: f(x), dev, iters)
            row[f"{cfg}_per_layer_us"] = round((row[f"{cfg}_ms"] - row["plain_ms"]) * 1e3 / L, 1)
            if cfg == "all" and sz["batches"][1] == B:
                row["all_uncaptured_ms"] = _ms(lambda t=tables, x=x: eager_forward(model, t)(x, False), dev, 3)
            del f, tables
        res[f"B={B}"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
        print(f"B={B}", json.dumps(res[f"B={B}"]), flush=True)
    out["timing"] = res


def inductor(model: StandIn, sz: dict[str, Any], out: dict[str, Any], mode: str, backend: str) -> None:
    """Part 3: one layer's step (every kind), compiled (``backend``: inductor on the GPU) and captured, against
    the eager capture."""
    from torch.utils._pytree import tree_map

    dev, L, d, B = model.device, model.num_layers, model.hidden_size, sz["batches"][-1]
    layer = resolve_layers("band", L)[0]
    tables = new_tables(model, B + 1, B, timing=True, erss_rows=B)
    for i in range(B):
        tables.admit(i + 1, _timing_settings(L, d, i, "all"))
    tables.bind_step(torch.arange(1, B + 1, device=dev), decode=True)

    def step(o: torch.Tensor, r: torch.Tensor, buffers: Any) -> torch.Tensor:
        o2, r2 = graph_step(tables, layer, o, r, buffers=buffers)
        return o2 + r2

    t0 = time.perf_counter()
    compiled = torch.compile(step, fullgraph=True, dynamic=False, backend=backend)
    g = torch.Generator(device=dev).manual_seed(0)
    o, r = (torch.randn(B, d, device=dev, generator=g).to(model.dtype) for _ in range(2))
    twin = tree_map(lambda t: t.clone(), tables.buffers)
    y_c = compiled(o.clone(), r.clone(), twin)
    y_e = step(o.clone(), r.clone(), tree_map(lambda t: t.clone(), tables.buffers))
    res: dict[str, Any] = {"backend": backend, "layer": layer, "B": B, "compile_s": round(time.perf_counter() - t0, 1)}
    res["max_abs_diff_vs_eager"] = float((y_c.float() - y_e.float()).abs().max())
    for name, fn in (("eager_captured", step), ("inductor_captured", compiled)):
        o_s, r_s = o.clone(), r.clone()
        f = Captured(_bound(fn, o_s, r_s, twin), o, mode)
        res[f"{name}_us"] = round(_ms(lambda f=f: f(o), dev, 50 if mode == "cuda" else 3) * 1e3, 1)
    out["compiled_one_layer"] = res
    print("compiled", json.dumps(res), flush=True)


def _bound(fn: Callable[..., torch.Tensor], o: torch.Tensor, r: torch.Tensor, buffers: Any) -> Callable[..., Any]:
    """``fn(o, r, buffers)`` as a one-argument function to capture (its argument is unused: o and r are static)."""
    return lambda _x: fn(o, r, buffers)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", default="gpu_graph_check")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, make_fx instead of CUDA graphs")
    a = ap.parse_args(argv)
    dry = a.dry_run or not torch.cuda.is_available()
    sz, dev = (DRY, torch.device("cpu")) if dry else (REAL, torch.device("cuda"))
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "device": "cpu (dry run)" if dry else torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": f"stand-in: {sz['layers']} layers x {sz['hidden']}, gated MLP {sz['inter']}, {sz['dtype']}, no attention",
        "command": "python benchmarks/gpu_graph_check.py" + (" --dry-run" if dry else ""),
    }
    threads = torch.get_num_threads()
    if dry:
        torch.set_num_threads(1)  # tiny tensors: threads only contend
    try:
        model = StandIn(sz["layers"], sz["hidden"], sz["inter"], seed=0, dtype=sz["dtype"], device=dev)
        equality(model, sz, "fx" if dry else "cuda", out)
        timing(model, sz, "eager" if dry else "cuda", out)
        try:
            inductor(model, sz, out, "eager" if dry else "cuda", "aot_eager" if dry else "inductor")
        except Exception as e:  # report, keep what was measured
            out["compiled_one_layer"] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    finally:
        torch.set_num_threads(threads)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "gpu_graph_check.json").write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps({k: out[k] for k in ("device", "seconds")}), flush=True)
    return out


if __name__ == "__main__":
    main()
