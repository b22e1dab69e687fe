"""The SGLang plugin on a GPU: norms vs the transformers backend, overhead vs stock SGLang (both with CUDA graphs), tp/dp.

For a machine with NVIDIA GPUs and SGLang 0.5.23 installed next to the plugin
(``make sglang`` there). It builds a random-weight Qwen2 model of realistic
size (default: 28 layers x 1536, the 1.5B shape; the tokenizer is the packaged
default model's), so no hub is needed, then:

1. starts the plugin server (fp32 weights cast to bf16 by SGLang unless
   ``--dtype``), asks for all-layer norms of a greedy continuation, and
   compares them with the transformers backend on the same tokens;
2. measures decode tok/s of a batch: stock SGLang *with* CUDA graphs (a
   server without the plugin), stock requests on the plugin server (CUDA
   graphs on: the plugin's step is captured; passes holding an ALRR request
   run eagerly), and band capture / ALRR / ERSS on it;
3. repeats 2 for the plugin with ``--tp 2`` and ``--dp 2`` when there are
   at least 2 GPUs.

Usage:
    python benchmarks/sglang_gpu_check.py [--layers 28 --hidden 1536] [--batch 32] [--max-new-tokens 128]

Writes ``docs/results/sglang_gpu_check.md`` (and ``.json``). Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import random_lm, report_head, run_info, sglang_tok_s, write_report  # noqa: E402
from l2reason.backends.sglang.server import SGLangServer  # noqa: E402
from l2reason.serving import EngineSettings  # noqa: E402


def build_model(folder: Path, layers: int, hidden: int, heads: int, kv_heads: int, inter: int) -> Path:
    """A random-weight Qwen2 checkpoint with the default model's tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from l2reason.models.load import convert_packaged
    from l2reason.models.registry import find_packaged

    if (folder / "config.json").is_file():
        return folder
    tok_src = convert_packaged(find_packaged("default"))  # type: ignore[arg-type]
    tok = AutoTokenizer.from_pretrained(tok_src)
    model = random_lm(
        (len(tok), hidden, inter, layers, heads, kv_heads), dtype=torch.bfloat16, tie_word_embeddings=False
    )
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=8960)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--folder", default=str(ROOT / "out" / "random-qwen2"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "sglang_gpu_check"))
    args = ap.parse_args()
    import torch

    folder = build_model(Path(args.folder), args.layers, args.hidden, args.heads, args.kv_heads, args.intermediate)
    L = args.layers
    band = list(range(L - L // 4, L - 1))
    prompts = [f"Item {i}: the quick brown fox jumps over the lazy dog." for i in range(args.batch)]
    modes = {
        "stock": None,
        "norms-band": EngineSettings(layers=band),
        "alrr": EngineSettings(layers=band, interventions=[{"kind": "alrr"}]),
        "erss": EngineSettings(layers=band, interventions=[{"kind": "erss"}]),
    }
    out: dict = {
        **run_info(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "model": f"random Qwen2 {L}x{args.hidden} ({args.dtype})",
        "runs": {},
    }
    common = ["--dtype", args.dtype, "--context-length", "4096"]

    def measure(name: str, srv: SGLangServer, which: dict) -> None:
        rates: dict[str, list[float]] = {m: [] for m in which}
        sglang_tok_s(srv, prompts[:2], 8, None)  # warm-up
        for r in range(args.rounds):
            for m in which if r % 2 == 0 else reversed(list(which)):
                rates[m].append(sglang_tok_s(srv, prompts, args.max_new_tokens, which[m]))
        out["runs"][name] = {m: round(statistics.median(v), 2) for m, v in rates.items()}
        write_report(args.out, out)

    with SGLangServer(str(folder), device="cuda", extra_args=common, plugin=False) as stock:
        measure("stock SGLang, CUDA graphs on", stock, {"stock": None})
    with SGLangServer(str(folder), device="cuda", extra_args=common) as srv:
        measure("plugin server (graphs on; ALRR passes eager)", srv, modes)
        # norms vs the transformers backend on the same tokens (fp32 reference)
        from l2reason.backends.base import GenerationRequest, NormSpec, SamplingParams
        from l2reason.backends.hf import HFBackend
        from l2reason.backends.sglang import SGLangBackend

        req = GenerationRequest(
            prompt=prompts[0], sampling=SamplingParams(max_new_tokens=16), norms=NormSpec(layers="all")
        )
        a = SGLangBackend(srv.url).generate(req).candidates[0]
        b = HFBackend(str(folder)).generate(req).candidates[0]
        import numpy as np

        n = min(a.completion_tokens, b.completion_tokens)
        rel = np.abs(a.norms.array()[:n] - b.norms.array()[:n]) / np.maximum(b.norms.array()[:n], 1e-6)
        out["norms_vs_transformers"] = {
            "same_tokens": a.text == b.text,
            "max_rel_diff": float(rel.max()),
            "median_rel_diff": float(np.median(rel)),
        }
    if torch.cuda.device_count() >= 2:
        for flag in ("--tp", "--dp"):
            kw = {"tp": 2} if flag == "--tp" else {"dp": 2}
            with SGLangServer(str(folder), device="cuda", extra_args=common, **kw) as srv:
                measure(f"plugin server {flag} 2", srv, {"stock": None, "norms-band": modes["norms-band"]})
    lines = report_head("SGLang plugin on a GPU", out, f"GPUs: {out['gpus']}; {out['model']}", "")
    for name, r in out["runs"].items():
        lines.append(f"- {name}: " + ", ".join(f"{m} {v} tok/s" for m, v in r.items()))
    lines += ["", f"Norms vs the transformers backend: {out.get('norms_vs_transformers')}", ""]
    write_report(args.out, out, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
