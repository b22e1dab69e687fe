"""Where the vLLM plugin's fixed cost comes from: stock vLLM vs stock + the plugin's KV connector vs the full plugin.

Run with vLLM's environment, one configuration per process (offline ``LLM``
API, eager, bf16, batch 8 x 48 new tokens, greedy, ``ignore_eos``; the first
call warms up, then two timed calls):

    for m in stock conn-raw conn plugin; do .venv-vllm/bin/python benchmarks/vllm_connector_ab.py $m [MODEL_FOLDER]; done

MODEL_FOLDER defaults to the default model's converted folder (``l2reason models`` shows where it is).

``conn`` = vLLM's own Qwen2 class with the plugin's KV connector configured
(it moves no KV and no request asks for anything); ``plugin`` = the plugin's
class and connector. Both get stock vLLM's CPU core binding, as
``l2reason_vllm.launch`` gives the server (``cpu_binding_env``); ``conn-raw``
and ``plugin-raw`` keep vLLM's binding for a configured connector (one more
core reserved per worker: the cause of the earlier ~0.4x). Prints tok/s per
timed call and the OpenMP reservation used. Not a test.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> None:
    from l2reason_vllm.launch import KV_TRANSFER_CONFIG, RESERVED_CPU_ENV, cpu_binding_env

    mode = sys.argv[1] if len(sys.argv) > 1 else "stock"
    if mode not in ("stock", "conn", "conn-raw", "plugin", "plugin-raw"):
        raise SystemExit(f"unknown mode {mode!r}: stock, conn, conn-raw, plugin, plugin-raw")
    model = sys.argv[2] if len(sys.argv) > 2 else os.path.expanduser("~/.cache/l2reason/models/qwen2.5-coder-0.5b")
    kw: dict = dict(model=model, dtype="bfloat16", max_model_len=512, max_num_seqs=8)
    kw["enforce_eager"] = True
    if mode != "stock":
        kw["kv_transfer_config"] = KV_TRANSFER_CONFIG
    if mode.startswith("plugin"):
        kw["hf_overrides"] = {"architectures": ["L2Qwen2ForCausalLM"]}
    if mode in ("conn", "plugin"):
        os.environ.update(cpu_binding_env(os.environ))  # before the engine core process starts
    elif mode.endswith("-raw"):
        os.environ.pop(RESERVED_CPU_ENV, None)
    print(mode, f"{RESERVED_CPU_ENV}={os.environ.get(RESERVED_CPU_ENV, '(vLLM default)')}", flush=True)

    from vllm import LLM, SamplingParams

    llm = LLM(**kw)
    prompts = [f"Question {i}: explain why the number {i * 7} is interesting." for i in range(8)]
    sp = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(max_tokens=4))
    for _ in range(2):
        t = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        dt = time.perf_counter() - t
        print(mode, "tok/s", round(sum(len(o.outputs[0].token_ids) for o in outs) / dt, 1), flush=True)


if __name__ == "__main__":
    main()
