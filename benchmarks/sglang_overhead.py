"""The SGLang plugin's cost: decode tok/s with norm capture and interventions vs SGLang's own forward.

One SGLang server with the plugin; requests without l2reason settings take
SGLang's stock forward (the plugin steps aside), so "stock" and every plugin
mode run on the same server build, same batch, interleaved in each round (the
order alternates). Each call: ``--batch`` distinct prompts, greedy,
``--max-new-tokens`` tokens each (``ignore_eos``). In the same run, the
embedded transformers backend decodes the same batch (band norms), for the
SGLang vs transformers comparison on this machine.

Usage:
    python benchmarks/sglang_overhead.py [--rounds 3] [--batch 8] [--max-new-tokens 32] [--device cpu] [--out PATH]

Writes ``docs/results/sglang_overhead.md`` (and ``.json``) with the machine,
versions and command, after every round (a killed run keeps what it measured).
Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common as common  # noqa: E402
from l2reason.backends.sglang.server import SGLangServer  # noqa: E402
from l2reason.serving import EngineSettings  # noqa: E402

#: static steering on the band (a small vector: the tokens may change, the cost is what is measured)
STATIC = EngineSettings(
    layers=common.BAND,
    interventions=[{"kind": "static_steer", "vectors": {layer: [0.01] * 896 for layer in common.BAND}}],
)
MODES: dict[str, EngineSettings | None] = {"stock": None, **common.plugin_modes(), "static-steer": STATIC}


def versions(python: Path) -> dict[str, str]:
    """SGLang's, its environment's and this environment's library versions."""
    import torch
    import transformers

    sglang, torch_v, transformers_v = common.engine_versions(python, "sglang")
    return {
        "sglang": sglang,
        "sglang_env_torch": torch_v,
        "sglang_env_transformers": transformers_v,
        "hf_backend_torch": torch.__version__,
        "hf_backend_transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    ap = common.engine_args(__doc__, "sglang_overhead", max_new_tokens=32, dtype="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers-backend comparison")
    args = ap.parse_args()
    prompts = common.batch_prompts(args.batch)
    extra = ["--dtype", args.dtype, "--context-length", "2048", "--max-total-tokens", "16384"]
    srv = SGLangServer(args.model, device=args.device, extra_args=extra, log_path=ROOT / "out" / "bench-sglang.log")
    out: dict = {
        **common.run_info(),
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "batch": args.batch,
        "max_new_tokens": args.max_new_tokens,
        "cpu": common.cpu_model(),
        "versions": versions(srv.python),
        "tok_s": {m: [] for m in MODES},
        "ratio_vs_stock": {m: [] for m in MODES if m != "stock"},
    }
    with srv:
        out["ready_seconds"] = round(srv.ready_seconds, 1)
        common.sglang_tok_s(srv, prompts, args.max_new_tokens, None)  # warm-up
        for r in range(args.rounds):
            order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
            load = os.getloadavg()[0]
            got = {m: common.sglang_tok_s(srv, prompts, args.max_new_tokens, MODES[m]) for m in order}
            out.setdefault("loadavg_1min", []).append([round(load, 2), round(os.getloadavg()[0], 2)])
            for m, v in got.items():
                out["tok_s"][m].append(round(v, 3))
                if m != "stock":
                    out["ratio_vs_stock"][m].append(round(v / got["stock"], 4))
            write(args, out)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{m} {v:.2f}" for m, v in got.items()), flush=True)
    if not args.no_hf:
        out["hf_backend_tok_s"] = hf_rate(args, prompts)
        write(args, out)


def hf_rate(args: argparse.Namespace, prompts: list[str]) -> list[float]:
    """The embedded backend on the same batch (band norms), after the server has stopped."""
    import torch

    from l2reason.backends.base import GenerationRequest, NormSpec, SamplingParams
    from l2reason.backends.hf import HFBackend

    be = HFBackend(args.model)
    torch.set_num_threads(torch.get_num_threads())
    reqs = [
        GenerationRequest(prompt=p, sampling=SamplingParams(max_new_tokens=args.max_new_tokens), norms=NormSpec())
        for p in prompts
    ]
    rates = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        res = be.generate_many(reqs)
        rates.append(round(sum(x.completion_tokens for x in res) / (time.perf_counter() - t), 3))
    return rates


def write(args: argparse.Namespace, out: dict) -> None:
    med = {m: statistics.median(v) for m, v in out["tok_s"].items() if v}
    ratio = {m: statistics.median(v) for m, v in out["ratio_vs_stock"].items() if v}
    lines = [
        *common.report_head("SGLang plugin overhead", out),
        f"Date: {out['date']}; model {out['model']} ({out['dtype']}) on SGLang's {out['device']} path; "
        f"batch {out['batch']} x {out['max_new_tokens']} new tokens (greedy, ignore_eos); "
        f"{len(out['tok_s']['stock'])} interleaved rounds.  ",
        f"Machine: {out['cpu']}; versions: {out['versions']}.  ",
        f"Server ready in {out.get('ready_seconds', '?')} s. Load average (1 min) before / after each round: "
        f"{out.get('loadavg_1min', [])}.",
        "",
        "Decode throughput per call (all prompts' tokens / wall time of the batched `/generate`).",
        "`stock` = requests without l2reason settings, which run SGLang's own forward on the same server.",
        "",
        "| mode | median tok/s | median ratio to stock (same round) |",
        "|---|---|---|",
    ]
    for m in MODES:
        if m in med:
            r = "-" if m == "stock" else f"{ratio[m]:.3f} ({100 * (1 - ratio[m]):+.1f}% cost)"
            lines.append(f"| {m} | {med[m]:.2f} | {r} |")
    if out.get("hf_backend_tok_s"):
        hf = statistics.median(out["hf_backend_tok_s"])
        lines += [
            "",
            f"Transformers backend, same batch and prompts (raw text, band norms), same machine, after the server "
            f"stopped: median {hf:.2f} tok/s ({out['hf_backend_tok_s']}); SGLang stock / transformers = "
            f"{med['stock'] / hf:.2f}.",
        ]
    lines += ["", "Per-round values are in the `.json` next to this file.", ""]
    common.write_report(args.out, out, lines)


if __name__ == "__main__":
    main()
