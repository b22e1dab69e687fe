"""How long ``torch.compile`` takes to compile the graph-safe ℓ2 step (``l2reason.serving.graph``).

Compiles a loop of ``graph_step`` calls over ``LAYERS`` layers (hidden size 896, the packaged 0.5B
model's; 17 slots; 256 tokens; dynamic batch size, as vLLM compiles) with the intervention ``KINDS``
compiled in, and prints compile + first-run seconds. ``docs/results/vllm_graph/README.md`` has the
figures that decided which kinds the vLLM plugin traces by default.

Usage::

    python benchmarks/graph_compile_time.py 24 "" inductor                        # norm capture only
    python benchmarks/graph_compile_time.py 2 erss,static_steer,suppress aot_eager
"""

from __future__ import annotations

import argparse
import time

import torch

from l2reason.serving.graph import SlotTables, graph_step
from l2reason.serving.info import EngineModelInfo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("layers", type=int)
    ap.add_argument("kinds", help="comma-separated intervention kinds compiled in ('' = norm capture only)")
    ap.add_argument("backend", choices=["eager", "aot_eager", "inductor"])
    a = ap.parse_args()
    kinds = [k for k in a.kinds.split(",") if k]
    info = EngineModelInfo("t", num_layers=a.layers, hidden_size=896, dtype=torch.float32)
    tables = SlotTables(info, 17, max_tokens=256, kinds=kinds)

    def forward(o: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        for layer in range(a.layers):
            o, r = graph_step(tables, layer, o, r)
            o, r = o * 1.0001, r + 0.0  # a stand-in for the next layer
        return o + r

    compiled = torch.compile(forward, backend=a.backend, fullgraph=True, dynamic=True)
    t0 = time.perf_counter()
    compiled(torch.randn(7, 896), torch.randn(7, 896))
    print(
        f"{a.layers} layers, kinds {kinds or 'none'}, {a.backend}: compile + first run {time.perf_counter() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
