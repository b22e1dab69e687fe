"""vLLM's CPU core binding on a small machine: the worker on one core (stock's default) vs on every core.

vLLM's CPU build reserves ``VLLM_CPU_NUM_OF_RESERVED_CPU`` cores for its own
processes (API server, engine core) and binds the worker's OpenMP threads to
the rest; on 2 cores stock vLLM reserves 1. This A/B measures decode tok/s of
stock vLLM and of the l2reason plugin (band norms on every request) with 1
and with 0 reserved cores, at two batch sizes, interleaved over rounds (one
fresh offline ``LLM`` per configuration and round; eager, bf16, greedy,
``ignore_eos``; a warm-up call, then one timed call per batch size).

    python benchmarks/vllm_binding_ab.py --rounds 2 --batches 8,32 --tokens 128 \\
        --out docs/results/vllm_overhead/binding_ab.md

Runs itself in vLLM's environment (``$L2REASON_VLLM_PYTHON`` or ``.venv-vllm``) for each
configuration. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

CONFIGS = [("stock", "1"), ("stock", "0"), ("plugin", "1"), ("plugin", "0")]


def one(mode: str, batches: list[int], tokens: int, model: str) -> dict[str, float]:
    """One configuration in this process (vLLM's environment): tok/s per batch size."""
    from l2reason_vllm.launch import KV_TRANSFER_CONFIG
    from vllm import LLM, SamplingParams

    from l2reason.serving import SETTINGS_KEY, EngineSettings

    kw: dict = dict(model=model, dtype="bfloat16", max_model_len=512, max_num_seqs=max(batches), enforce_eager=True)
    extra = None
    if mode == "plugin":
        kw["kv_transfer_config"] = KV_TRANSFER_CONFIG
        kw["hf_overrides"] = {"architectures": ["L2Qwen2ForCausalLM"]}
        extra = {SETTINGS_KEY: EngineSettings(layers=[18, 19, 20, 21, 22]).encode()[SETTINGS_KEY]}
    llm = LLM(**kw)
    prompts = [f"Question {i}: explain why the number {i * 7} is interesting." for i in range(max(batches))]
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, extra_args=extra))
    out: dict[str, float] = {}
    for b in batches:
        sp = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True, extra_args=extra)
        t = time.perf_counter()
        res = llm.generate(prompts[:b], sp, use_tqdm=False)
        out[str(b)] = sum(len(o.outputs[0].token_ids) for o in res) / (time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/l2reason/models/qwen2.5-coder-0.5b"))
    ap.add_argument("--out", type=Path, default=Path("docs/results/vllm_overhead/binding_ab.md"))
    ap.add_argument("--one", nargs=2, metavar=("MODE", "RESERVED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    batches = [int(x) for x in args.batches.split(",")]
    if args.one:
        print("RESULT " + json.dumps(one(args.one[0], batches, args.tokens, args.model)), flush=True)
        return 0
    py = os.environ.get("L2REASON_VLLM_PYTHON", ".venv-vllm/bin/python")
    rows: list[dict] = []
    t0 = datetime.now(UTC)
    for r in range(args.rounds):
        for mode, reserved in CONFIGS:
            env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": reserved}
            cmd = [py, __file__, "--one", mode, reserved, "--batches", args.batches, "--tokens", str(args.tokens)]
            cmd += ["--model", args.model]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"{mode} reserved={reserved}: no result (exit {p.returncode})")
            res = json.loads(line[7:])
            load = os.getloadavg()[0]
            rows.append({"round": r, "mode": mode, "reserved": reserved, "load": load, **res})
            print(r, mode, reserved, {k: round(v, 1) for k, v in res.items()}, f"load {load:.1f}", flush=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks._common import cpu_model  # the other engine benchmarks' machine line

    cpu = cpu_model()
    vllm_v = subprocess.run([py, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True)
    lines = [
        "# vLLM CPU core binding on 2 cores: worker on 1 core (stock default) vs on both",
        "",
        f"Command: `python benchmarks/vllm_binding_ab.py --rounds {args.rounds} --batches {args.batches} "
        f"--tokens {args.tokens}`  ",
        f"Date: {t0:%Y-%m-%d %H:%M} UTC; CPU: {cpu}, {os.cpu_count()} cores; vLLM {vllm_v.stdout.strip()} (CPU build), "
        "eager, bf16, default model, greedy, `ignore_eos`; the plugin requests band norms (layers 18–22).  ",
        "Decode tok/s of one timed call per batch size, median over rounds (min–max); configurations interleaved "
        "within each round, one fresh engine each. `reserved` = `VLLM_CPU_NUM_OF_RESERVED_CPU`.",
        "",
        "| engine | reserved | " + " | ".join(f"batch {b} tok/s" for b in batches) + " | load (1 min) |",
        "|---|---:|" + "---:|" * len(batches) + "---:|",
    ]
    for mode, reserved in CONFIGS:
        mine = [x for x in rows if x["mode"] == mode and x["reserved"] == reserved]
        cells = []
        for b in batches:
            v = [x[str(b)] for x in mine]
            cells.append(f"{statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f})")
        load = statistics.median(x["load"] for x in mine)
        lines.append(f"| {mode} | {reserved} | " + " | ".join(cells) + f" | {load:.1f} |")
    lines += ["", "Per round:", "", "```", *(json.dumps(x) for x in rows), "```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
