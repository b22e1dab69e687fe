"""ALRR's extra compute at its firing rate: the share of decoder-layer passes that recursion adds.

The engine overhead benchmarks (``vllm_overhead.py``, ``sglang_overhead.py``) time ALRR on their batch; this
script counts what that batch's recursion costs in model work, so a measured slowdown can be set beside the
compute it buys. It runs the same prompts, greedy, at most the same number of new tokens, on the embedded transformers
backend (fp32; the engines' controllers are the same code, so the same tokens fire alike up to the engines'
numerics), with ALRR adaptive and static on the band, and reports per mode:

- active (token, layer) steps: the share where the activity test passed (τ < n < b·τ);
- re-run passes tried and kept;
- the FLOP share: extra decoder-layer passes / (tokens × the model's decoder layers), i.e. the fraction
  of the decoder's per-token work that recursion adds (attention over the context, the embedding and the
  LM head left out: on these short prompts the layer MLPs and projections dominate).

Usage:
    python benchmarks/alrr_flop_share.py [--batch 8] [--max-new-tokens 64] [--model default] [--out PATH]

Writes ``docs/results/alrr_flop_share.md`` (and ``.json``) with machine, versions and command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _common as common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "alrr_flop_share"))
    args = ap.parse_args()

    from l2reason import GenerationRequest, HFBackend, SamplingParams

    backend = HFBackend(args.model)
    n_layers = backend.num_layers
    prompts = common.batch_prompts(args.batch)
    out: dict = {
        **common.run_info(),
        "model": args.model,
        "batch": args.batch,
        "max_new_tokens": args.max_new_tokens,
        "cpu": common.cpu_model(),
        "cores": os.cpu_count(),
        "decoder_layers": n_layers,
        "modes": {},
    }
    for mode in ("adaptive", "static"):
        reqs = [
            GenerationRequest(
                prompt=p,
                sampling=SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens),
                norms=None,
                interventions=[{"kind": "alrr", "layers": common.BAND, "mode": mode}],
            )
            for p in prompts
        ]
        tokens = steps = active = tried = accepted = 0
        for res in backend.generate_many(reqs):
            for c in res.candidates:
                a = (c.interventions or {})["alrr"]
                tokens += c.completion_tokens
                steps += int(a["decode_steps"]) * len(a["layers"])
                active += int(sum(a["active_tokens"]))
                tried += int(sum(a["passes_tried"]))
                accepted += int(sum(a["passes_accepted"]))
        out["modes"][mode] = {
            "tokens": tokens,
            "active_share": active / steps if steps else 0.0,
            "passes_tried": tried,
            "passes_accepted": accepted,
            "flop_share": tried / (tokens * n_layers) if tokens else 0.0,
        }
        print(mode, out["modes"][mode], flush=True)
    write(args, out)


def write(args: argparse.Namespace, out: dict) -> None:
    """The markdown report and its JSON twin."""
    lines = [
        *common.report_head("ALRR's extra compute at its firing rate", out),
        f"Date: {out['date']}; model {out['model']} (fp32, embedded transformers backend), {out['decoder_layers']} "
        f"decoder layers; batch {out['batch']} x {out['max_new_tokens']} new tokens (greedy; a row may stop early at EOS, the engines' ignore it), the "
        f"prompts of the engine overhead benchmarks; ALRR on the band {common.BAND}, K=1, paper defaults.  ",
        f"Machine: {out['cpu']}, {out['cores']} cores.",
        "",
        "| ALRR mode | tokens | active (token, layer) steps | passes tried | passes kept | extra decoder work |",
        "|---|---|---|---|---|---|",
    ]
    for mode, m in out["modes"].items():
        lines.append(
            f"| {mode} | {m['tokens']} | {100 * m['active_share']:.1f}% | {m['passes_tried']} | "
            f"{m['passes_accepted']} | {100 * m['flop_share']:.2f}% |"
        )
    lines += [
        "",
        "Extra decoder work = passes tried / (tokens x decoder layers): each tried pass re-runs one decoder layer "
        "for one token (a pass that is not kept still costs its compute).",
    ]
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
