"""``benchmarks/gpu_graph_check.py --dry-run``: the GPU check's code path on the CPU (tiny sizes, make_fx for the
CUDA graph), so the script is known to run before a GPU is lent to try it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def test_gpu_graph_check_dry_run(tmp_path: Path) -> None:
    from benchmarks import gpu_graph_check

    threads = torch.get_num_threads()
    out = gpu_graph_check.main(["--dry-run", "--out", str(tmp_path)])
    assert torch.get_num_threads() == threads  # the dry run gives the threads back
    assert json.loads((tmp_path / "gpu_graph_check.json").read_text())["device"] == "cpu (dry run)"
    eq = out["equality"]
    assert eq["ok"] and eq["steps"] >= 30 and eq["capture"] == "fx"
    assert eq["eager_vs_reference"]["streams_equal"] and eq["eager_vs_reference"]["records_equal"]
    assert out["compiled_one_layer"]["max_abs_diff_vs_eager"] == 0.0, out["compiled_one_layer"]
    for row in out["timing"].values():
        assert {"plain_ms", "norms_ms", "all_ms", "alrr_ms", "all_per_layer_us"} <= set(row)
