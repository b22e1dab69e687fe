"""The SGLang plugin's own time per decode step, without a server: host side and the per-layer step, per mode.

Drives :class:`l2reason_sglang.slots.SGLangSlots` as the plugin does on an
eager (CPU) decode pass of ``--batch`` requests, all with the same settings,
on the default model's shape (24 layers × 896, float32): ``prepare`` (admit,
bind the token map), ``after_layer`` at every layer on random ``o``/``r``
(what the plugin adds to the model's forward; the model itself is not run),
and ``records`` (the one read after the forward); next to it, the plugin's
previous path (the reference ``SlotRuntime`` for every row: plan, the
layers it touches, records). ALRR runs on the eager
reference runtime with a re-run that costs nothing here (its real cost is
the re-run layer, which a server measurement includes). The median of
``--steps`` steps after a warm-up, on ``--threads`` threads.

Usage:
    python benchmarks/sglang_step_cost.py [--batch 8] [--steps 30] [--threads 1] [--out PATH]

Writes ``<out>.md`` and ``.json`` (default ``docs/results/sglang_graph/step_cost``). Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "integrations" / "sglang"))

import torch  # noqa: E402
from l2reason_sglang.slots import SGLangSlots  # noqa: E402

from benchmarks import _common as common  # noqa: E402
from benchmarks.sglang_overhead import MODES  # noqa: E402
from l2reason.serving.info import EngineModelInfo  # noqa: E402
from l2reason.serving.slots import SlotRuntime  # noqa: E402

L, D = 24, 896  # the default model (Qwen2.5-Coder-0.5B)


def time_mode(settings: object, batch: int, steps: int) -> dict[str, float]:
    """Median milliseconds per decode step of prepare, the 24 layers' step, and records."""
    info = EngineModelInfo("bench", num_layers=L, hidden_size=D, dtype=torch.float32)
    slots = SGLangSlots(info, 4 * batch + 1, device="cpu", max_tokens=4096)
    rids, ids = [f"r{i}" for i in range(batch)], list(range(1, batch + 1))
    per: dict[str, list[float]] = {"prepare": [], "layers": [], "records": []}
    o, r = torch.randn(batch, D), torch.randn(batch, D) * 10
    for k in range(steps + 3):
        t0 = time.perf_counter()
        step = slots.prepare(rids, ids, [settings] * batch, decode=True, num_tokens=batch)
        t1 = time.perf_counter()
        for layer in range(L):
            slots.after_layer(step, layer, o, r, lambda x: x)
        t2 = time.perf_counter()
        slots.records(step)
        t3 = time.perf_counter()
        if k >= 3:  # the first steps admit the requests and warm up
            for name, v in zip(per, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                v_ms = 1000 * v
                per[name].append(v_ms)
    return {name: round(statistics.median(v), 3) for name, v in per.items()}


def time_reference(settings: object, batch: int, steps: int) -> float:
    """Median milliseconds per decode step of the plugin's previous path: the reference runtime for every row."""
    info = EngineModelInfo("bench", num_layers=L, hidden_size=D, dtype=torch.float32)
    rt = SlotRuntime(info, num_slots=4 * batch + 1)
    rids, ids = [f"r{i}" for i in range(batch)], list(range(1, batch + 1))
    x, o = torch.randn(batch, D) * 10, torch.randn(batch, D)
    times = []
    for k in range(steps + 3):
        t0 = time.perf_counter()
        plan = rt.plan(ids, rids, [settings] * batch, decode=True)  # type: ignore[list-item]
        for layer in sorted(plan.touched_layers):
            rt.step_layer(plan, layer, x, mlp_out=o, rerun=lambda v: v)
        rt.records(plan)
        if k >= 3:
            times.append(1000 * (time.perf_counter() - t0))
    return round(statistics.median(times), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "sglang_graph" / "step_cost"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict = {
        **common.run_info(),
        "cpu": common.cpu_model(),
        "torch": torch.__version__,
        "batch": args.batch,
        "threads": args.threads,
        "loadavg_before": round(os.getloadavg()[0], 2),
        "ms": {},
    }
    for mode, settings in MODES.items():
        if settings is not None:
            out["ms"][mode] = time_mode(settings, args.batch, args.steps)
            out["ms"][mode]["reference"] = time_reference(settings, args.batch, args.steps)
            print(mode, out["ms"][mode], flush=True)
    out["loadavg_after"] = round(os.getloadavg()[0], 2)
    lines = [
        *common.report_head("SGLang plugin: its own time per decode step (no server)", out),
        f"Date: {out['date']}; {out['cpu']}, {args.threads} thread(s), torch {out['torch']}; batch {args.batch} "
        f"decode rows with the same settings, 24 layers × 896 (float32); median of {args.steps} steps. "
        f"Load average (1 min) before / after: {out['loadavg_before']} / {out['loadavg_after']}.",
        "",
        "| mode | prepare (ms) | step at 24 layers (ms) | records (ms) | total (ms) | before: reference runtime (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for mode, ms in out["ms"].items():
        total = ms["prepare"] + ms["layers"] + ms["records"]
        lines.append(
            f"| {mode} | {ms['prepare']} | {ms['layers']} | {ms['records']} | {total:.2f} | {ms['reference']} |"
        )
    lines += ["", "ALRR's re-run costs nothing here (identity); its real cost is in the server measurement.", ""]
    common.write_report(args.out, out, lines)


if __name__ == "__main__":
    main()
