"""The vLLM plugin's cost: decode tok/s with norm capture and interventions vs stock vLLM, compiled and eager.

Four vLLM servers run at once: stock and with the plugin, each in vLLM's
default compiled mode and with ``--enforce-eager``. Each round calls every
(server, mode) once, interleaved (the order alternates between rounds), so a
ratio compares calls made seconds apart on the same machine. Each call:
``--batch`` distinct prompts as concurrent completions, greedy,
``--max-new-tokens`` tokens each (``ignore_eos``). Modes on the plugin server:
``off`` (requests without settings: the plugin's op runs and finds nothing to
do), band norms, all-layer norms, ALRR (adaptive and static), ERSS, static steering.

Usage:
    python benchmarks/vllm_overhead.py [--rounds 3] [--batch 8] [--max-new-tokens 64] [--dtype bfloat16]
        [--compiled-only] [--plugin-config JSON]

``--compiled-only`` starts only the two compiled servers (half the memory);
``--plugin-config`` is the plugin server's ``additional_config["l2reason"]``
(e.g. ``'{"kinds": ["erss", "static_steer"]}'``, see ``docs/vllm.md``). The
plugin server logs its own host time per step (``$L2REASON_VLLM_TIMING``:
its per-step bind, record read-out and eager op, in microseconds), and the
report quotes the last such line next to the ratios and the issue's goals.

Writes ``docs/results/vllm_overhead.md`` (and ``.json``) with the machine,
versions and command, after every round. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common as common  # noqa: E402
from l2reason.backends.vllm.server import VLLMServer  # noqa: E402
from l2reason.serving import SETTINGS_KEY, EngineSettings  # noqa: E402

MODES: dict[str, EngineSettings | None] = {
    "off": None,
    **common.plugin_modes(),
    "static_steer": EngineSettings(
        layers=common.BAND, interventions=[{"kind": "static_steer", "vectors": {12: [0.01] * 896}}]
    ),
}


def versions(python: Path) -> dict[str, str]:
    """vLLM's, torch's and transformers' versions in vLLM's environment, and this Python's."""
    vllm, torch_v, transformers_v = common.engine_versions(python, "vllm")
    return {"vllm": vllm, "torch": torch_v, "transformers": transformers_v, "python": platform.python_version()}


def call(srv: VLLMServer, prompts: list[str], max_new: int, settings: EngineSettings | None) -> float:
    """Decode tok/s of one batch (concurrent completions; vLLM batches them)."""

    def one(p: str) -> int:
        body: dict = {"model": srv.model_path, "prompt": p, "max_tokens": max_new, "temperature": 0.0}
        body.update(ignore_eos=True, return_token_ids=True)
        if settings is not None:
            body["vllm_xargs"] = {SETTINGS_KEY: settings.encode()[SETTINGS_KEY]}
        out = srv.complete(body)
        if settings is not None and not (out.get("kv_transfer_params") or {}).get("l2r"):
            raise RuntimeError("no records came back")
        return len(out["choices"][0]["token_ids"])

    t = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        n = sum(pool.map(one, prompts))
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = common.engine_args(__doc__, "vllm_overhead/vllm_overhead", max_new_tokens=64, dtype="bfloat16")
    ap.add_argument("--note", default="", help="what else ran on the machine (written into the report)")
    ap.add_argument("--render", metavar="JSON", help="only re-write the report from a stored .json")
    ap.add_argument("--compiled-only", action="store_true", help="only the compiled servers (stock and plugin)")
    ap.add_argument("--plugin-config", default=None, help="the plugin server's additional_config['l2reason'] (JSON)")
    args = ap.parse_args()
    if args.render:
        stored = json.loads(Path(args.render).read_text())
        if args.note:
            stored["note"] = args.note
        write(args, stored)
        return
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["L2REASON_VLLM_TIMING"] = "1"  # the plugin server logs its own host time per step
    prompts = common.batch_prompts(args.batch)
    logs = ROOT / "out"
    plugin_extra = (
        ["--additional-config", json.dumps({"l2reason": json.loads(args.plugin_config)})]
        if args.plugin_config
        else None
    )
    servers = {
        (compiled, plugin): VLLMServer(
            args.model,
            dtype=args.dtype,
            max_model_len=1024,
            max_num_seqs=max(8, args.batch),
            eager=not compiled,
            plugin=plugin,
            log_path=logs / f"bench-vllm-{'compiled' if compiled else 'eager'}-{'plugin' if plugin else 'stock'}.log",
            extra_args=plugin_extra if plugin else None,
        )
        for compiled in ((True,) if args.compiled_only else (True, False))
        for plugin in (False, True)
    }
    some = next(iter(servers.values()))
    out: dict = {
        **common.run_info(),
        "model": args.model,
        "dtype": args.dtype,
        "batch": args.batch,
        "max_new_tokens": args.max_new_tokens,
        "cpu": common.cpu_model(),
        "cores": os.cpu_count(),
        "versions": versions(some.python),
        "note": args.note,
        "plugin_config": args.plugin_config,
        "plugin_host_time": {},  # per plugin server: its last timing line (``$L2REASON_VLLM_TIMING``)
        "ready_seconds": {},
        "load_avg_1min": [],  # at the end of each round (the four servers' own processes count)
        "tok_s": {},
        "ratio_vs_stock": {},
    }
    try:
        with ThreadPoolExecutor(len(servers)) as pool:  # started together (start-up is mostly compilation)
            list(pool.map(lambda srv: srv.start(timeout=1800), servers.values()))
        for (compiled, plugin), srv in servers.items():
            out["ready_seconds"][_name(compiled, plugin)] = round(srv.ready_seconds, 1)
            print(f"{_name(compiled, plugin)} ready in {srv.ready_seconds:.0f} s", flush=True)
        modes = sorted({c for c, _ in servers}, reverse=True)  # compiled first
        runs = [(c, False, "stock") for c in modes] + [(c, True, m) for c in modes for m in MODES]
        for key in runs:
            out["tok_s"][_key(*key)] = []
            if key[1]:
                out["ratio_vs_stock"][_key(*key)] = []
        for srv in servers.values():
            call(srv, prompts[:2], 8, None)  # warm-up
        for r in range(args.rounds):
            order = runs if r % 2 == 0 else list(reversed(runs))
            got = {}
            for compiled, plugin, mode in order:
                got[(compiled, plugin, mode)] = call(
                    servers[(compiled, plugin)], prompts, args.max_new_tokens, MODES.get(mode) if plugin else None
                )
            for (compiled, plugin, mode), v in got.items():
                out["tok_s"][_key(compiled, plugin, mode)].append(round(v, 3))
                if plugin:
                    ratio = v / got[(compiled, False, "stock")]
                    out["ratio_vs_stock"][_key(compiled, plugin, mode)].append(round(ratio, 4))
            out["load_avg_1min"].append(round(os.getloadavg()[0], 2))
            for (compiled, plugin), srv in servers.items():
                if plugin:
                    out["plugin_host_time"][_name(compiled, plugin)] = host_time(srv.log_path)
            write(args, out)
            print(
                f"round {r + 1}/{args.rounds}: " + ", ".join(f"{_key(*k)} {v:.1f}" for k, v in got.items()), flush=True
            )
    finally:
        for srv in servers.values():
            srv.stop()


def host_time(log_path: Path) -> str | None:
    """The plugin server's last ``l2reason timing`` line (its own host time per step), without the log prefix."""
    lines = [ln for ln in Path(log_path).read_text(errors="replace").splitlines() if "l2reason timing:" in ln]
    return lines[-1].split("l2reason timing:", 1)[1].strip() if lines else None


#: the issue's goals for the compiled plugin server (ratio to stock, same round), issue 29
GOALS = {"norms-band": 0.98, "norms-all": 0.97, "alrr": 0.90, "erss": 0.92, "static_steer": 0.98}


def _name(compiled: bool, plugin: bool) -> str:
    return f"{'compiled' if compiled else 'eager'}/{'plugin' if plugin else 'stock'}"


def _key(compiled: bool, plugin: bool, mode: str) -> str:
    return f"{'compiled' if compiled else 'eager'}/{mode if plugin else 'stock'}"


def write(args: argparse.Namespace, out: dict) -> None:
    med = {k: statistics.median(v) for k, v in out["tok_s"].items() if v}
    ratio = {k: statistics.median(v) for k, v in out["ratio_vs_stock"].items() if v}
    n = len(next(iter(out["tok_s"].values()), []))
    lines = [
        *common.report_head("vLLM plugin overhead", out),
        f"Date: {out['date']}; model {out['model']} ({out['dtype']}), vLLM CPU build; batch {out['batch']} x "
        f"{out['max_new_tokens']} new tokens (greedy, ignore_eos, concurrent completions); {n} interleaved rounds.  ",
        f"Machine: {out['cpu']}, {out['cores']} cores. {out.get('note') or ''} 1-minute load average at the end of "
        f"each round: {out.get('load_avg_1min') or 'not recorded'}. Absolute tok/s vary from call to call; compare "
        "the ratios, which come from calls made seconds apart in the same round.  ",
        f"Versions: {out['versions']}.  ",
        f"Servers ready in (s; all started at once): {out['ready_seconds']}.",
        "",
        "Decode throughput per call (all prompts' tokens / wall time). `stock` = vLLM without the plugin, same "
        "compile mode; `off` = the plugin server with requests that ask for nothing.",
        "",
        "| mode | median tok/s | median ratio to stock (same mode, same round) | per-round ratios |",
        "|---|---|---|---|",
    ]
    for k in out["tok_s"]:
        if k in med:
            r = f"{ratio[k]:.3f} ({100 * (1 - ratio[k]):+.1f}% cost)" if k in ratio else "-"
            each = ", ".join(f"{x:.2f}" for x in out["ratio_vs_stock"].get(k, [])) or "-"
            lines.append(f"| {k} | {med[k]:.1f} | {r} | {each} |")
    goals = [(m, g, ratio.get(f"compiled/{m}")) for m, g in GOALS.items()]
    if any(r is not None for _, _, r in goals):
        lines += ["", "Goals (issue 29, compiled, median ratio to stock):", "", "| mode | goal | measured | met |"]
        lines += ["|---|---|---|---|"]
        lines += [f"| {m} | ≥{g:.2f} | {r:.3f} | {'yes' if r >= g else 'no'} |" for m, g, r in goals if r is not None]
    for name, line in (out.get("plugin_host_time") or {}).items():
        lines += ["", f"Plugin's own host time per step ({name}, all modes together): {line or 'not logged'}."]
    if "compiled/stock" in med and "eager/stock" in med:
        lines += ["", f"Stock vLLM, compiled / eager: {med['compiled/stock'] / med['eager/stock']:.2f}."]
    lines += ["", "Per-round values are in the `.json` next to this file.", ""]
    common.write_report(args.out, out, lines)


if __name__ == "__main__":
    main()
