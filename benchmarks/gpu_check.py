"""GPU check (run on a lent accelerator; no packaged weights there).

A random-weight model with the default model's shape (Qwen2, 24 x 896, vocab
151,936, bf16) measures decode throughput with norm capture off/band/all and
with ALRR/ERSS, at several batch sizes; then the pure controller step
functions are captured in a CUDA graph and replayed, and compared with eager.

    python benchmarks/gpu_check.py --out DIR

The graph-safe per-layer step of the engine plugins (``docs/graph_step.md``)
has its own check: ``benchmarks/gpu_graph_check.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import random_lm, word_tokenizer  # noqa: E402


def decode_bench(out: dict) -> None:
    from l2reason.backends.base import GenerationRequest, Message, NormSpec, SamplingParams
    from l2reason.backends.hf import HFBackend
    from l2reason.models import LoadedModel

    V = 151936
    tok = word_tokenizer([f"w{i}" for i in range(3, V)], "{% for m in messages %}{{ m['content'] }} {% endfor %}")
    shape = (V, 896, 4864, 24, 14, 2)  # the default model's (Qwen2.5-0.5B)
    model = random_lm(shape, dtype=torch.bfloat16, tie_word_embeddings=True, eos_token_id=1, pad_token_id=0).cuda()
    model.generation_config.eos_token_id = 999_999  # never stop early: fixed token counts
    be = HFBackend(LoadedModel(model=model, tokenizer=tok, model_id="random-qwen2-0.5b-shape", source="random"))
    prompt = " ".join(f"w{i}" for i in range(100, 164))
    T = 128

    def run(n, norms, iv=()):
        req = GenerationRequest(
            messages=[Message(role="user", content=prompt)],
            n=n,
            sampling=SamplingParams(max_new_tokens=T, temperature=1.0, seed=0),
            norms=norms,
            interventions=list(iv),
        )
        torch.cuda.synchronize()
        t = time.perf_counter()
        r = be.generate(req)
        torch.cuda.synchronize()
        return r.completion_tokens / (time.perf_counter() - t)

    run(1, None)
    res = {}
    for n in (1, 8, 32):
        for name, norms, iv in (
            ("off", None, ()),
            ("band", NormSpec(layers="band"), ()),
            ("all", NormSpec(layers="all"), ()),
            ("alrr", NormSpec(layers="band"), ({"kind": "alrr", "threshold": {"warmup": 16}},)),
            ("erss", NormSpec(layers="band"), ({"kind": "erss", "threshold": {"warmup": 16}},)),
        ):
            rates = [run(n, norms, iv) for _ in range(3)]
            res[f"n={n} {name}"] = round(sorted(rates)[1], 1)
            print(f"n={n} {name}: {res[f'n={n} {name}']} tok/s", flush=True)
    out["decode_tok_s_median_of_3"] = res
    out["tokens_per_call_per_row"] = T


def graph_check(out: dict) -> None:
    from l2reason.signal.threshold import tau_init, tau_update, tau_value
    from l2reason.techniques.alrr import alrr_accept, alrr_active
    from l2reason.techniques.erss import erss_init, erss_step

    B, d, M = 8, 896, 32
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(B, d, device=dev, generator=g)
    xt = x * 1.3
    valid = torch.ones(B, dtype=torch.bool, device=dev)
    seeds = torch.arange(B, device=dev, dtype=torch.int64) * 7919
    tau_s = tau_init((B,), device=dev)
    es = erss_init(B, M, d, seeds, dtype=torch.float32, device=dev)
    kw = dict(M=M, gamma=1.0, S=2, p=1.0, C=1, c_min=-1.0, beta=0.5, exact=False)

    def step(x, xt, tau_s, es):
        n = x.norm(dim=-1)
        tau = tau_value(tau_s, warmup=4)
        tau_s = tau_update(tau_s, n, valid)
        act = alrr_active(n, tau, 1.5, valid)
        st = alrr_accept(x, n, xt, tau, act, 0.2, 1.5)
        er = erss_step(es, st.x_next, st.n_next, tau, valid, r=None, **kw)
        return er.x_out, tau_s, er.state

    # eager reference over 12 steps
    ref_x, ref_t, ref_e = x, tau_s, es
    xs = []
    for i in range(12):
        xi = x * (1 + 0.05 * i)
        ref_x, ref_t, ref_e = step(xi, xi * 1.3, ref_t, ref_e)
        xs.append(ref_x.clone())
    # graph: static input buffers, state copied back in place after each replay
    s_x, s_xt = x.clone(), xt.clone()
    s_t = tuple(tuple(t.clone() for t in st) for st in tau_s)
    from l2reason.signal.p2 import P2State
    from l2reason.signal.threshold import TauState

    s_tau = TauState(P2State(*s_t[0]), P2State(*s_t[1]))
    s_es = type(es)(*(t.clone() for t in es))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step(s_x, s_xt, s_tau, s_es)  # warm-up allocations (no state copy-back)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o_x, o_tau, o_es = step(s_x, s_xt, s_tau, s_es)
    got = []
    for i in range(12):
        xi = x * (1 + 0.05 * i)
        s_x.copy_(xi)
        s_xt.copy_(xi * 1.3)
        graph.replay()
        got.append(o_x.clone())
        for a, b in zip(s_tau.q1 + s_tau.q3, o_tau.q1 + o_tau.q3, strict=True):
            a.copy_(b)
        for a, b in zip(s_es, o_es, strict=True):
            a.copy_(b)
    diff = max(float((a - b).abs().max()) for a, b in zip(xs, got, strict=True))
    out["cuda_graph_step"] = {"steps": 12, "max_abs_diff_vs_eager": diff, "ok": diff < 1e-4}
    print("cuda graph replay vs eager max diff", diff, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_check")
    a = ap.parse_args()
    import transformers

    out = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/gpu_check.py",
    }
    try:
        graph_check(out)
    except Exception as e:  # report, then continue with the throughput part
        out["cuda_graph_step"] = {"error": f"{type(e).__name__}: {e}"}
        print("graph check failed", e, flush=True)
    decode_bench(out)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "gpu_check.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
