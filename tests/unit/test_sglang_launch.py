"""The SGLang plugin's launcher and the client's address handling (no server needed)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from l2reason.backends.sglang import parse_url
from l2reason.backends.shared import is_server_spec
from l2reason.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integrations" / "sglang"))
from l2reason_sglang import launch

BASE = ["--model-path", "/models/x", "--port", "30000"]


@pytest.mark.parametrize(
    ("extra", "msg"),
    [
        (["--enable-dp-attention"], "DP attention"),
        (["--speculative-algorithm", "EAGLE"], "speculative decoding"),
        (["--speculative-algorithm=EAGLE"], "speculative decoding"),
        (["--enable-mixed-chunk"], "mixed chunked prefill"),
        (["--pp-size", "2"], "pipeline parallelism"),
        (["--pp-size=4"], "pipeline parallelism"),
        (["--attn-cp-size", "2"], "context-parallel"),
        (["--enable-torch-compile"], "torch.compile"),
    ],
)
def test_unsupported_modes_are_refused_before_sglang_starts(extra, msg):
    with pytest.raises(SystemExit, match=msg):
        launch.build([*BASE, *extra], env={})


def test_pp_size_one_and_missing_model():
    launch.build([*BASE, "--pp-size", "1"], env={})
    with pytest.raises(SystemExit, match="--model-path"):
        launch.build(["--port", "1"], env={})


def test_cpu_gets_the_cpu_engine_and_the_standin_gpu_gets_neither():
    cmd, env = launch.build([*BASE, "--device", "cpu"], env={"PYTHONPATH": "/mine"})
    assert cmd[1:3] == ["-m", "sglang.launch_server"] and "--disable-cuda-graph" not in cmd
    assert env["SGLANG_USE_CPU_ENGINE"] == "1" and env["SGLANG_EXTERNAL_MODEL_PACKAGE"] == "l2reason_sglang.models"
    first, rest = env["PYTHONPATH"].split(os.pathsep, 1)
    assert Path(first) == launch.STANDIN_DIR and (Path(first) / "sgl_kernel" / "__init__.py").is_file()
    assert rest == "/mine"
    cmd, env = launch.build([*BASE, "--device", "cpu", "--no-cpu-standin"], env={})
    assert "PYTHONPATH" not in env and "--no-cpu-standin" not in cmd
    cmd, env = launch.build([*BASE, "--device", "cuda"], env={})
    assert "SGLANG_USE_CPU_ENGINE" not in env and "PYTHONPATH" not in env
    assert "--disable-cuda-graph" not in cmd  # the plugin's step is graph-safe (see docs/sglang.md)


def test_stock_mode_keeps_the_cpu_setup_without_the_plugin():
    cmd, env = launch.build(
        [*BASE, "--device", "cpu", "--no-l2reason-plugin"], env={"SGLANG_EXTERNAL_MODEL_PACKAGE": "x"}
    )
    assert "SGLANG_EXTERNAL_MODEL_PACKAGE" not in env and env["SGLANG_USE_CPU_ENGINE"] == "1"
    assert Path(env["PYTHONPATH"]) == launch.STANDIN_DIR and "--no-l2reason-plugin" not in cmd
    cmd, env = launch.build([*BASE, "--device", "cuda", "--no-l2reason-plugin", "--enable-torch-compile"], env={})
    assert "--disable-cuda-graph" not in cmd and "--enable-torch-compile" in cmd  # stock SGLang, as asked


def test_standin_fails_loudly_for_kernels_it_does_not_have():
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location(
        "standin_sgl_kernel", launch.STANDIN_DIR / "sgl_kernel" / "__init__.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(NotImplementedError, match="fused_add_rmsnorm_cpu"):
        mod.fused_add_rmsnorm_cpu(torch.zeros(1))
    with pytest.raises(AttributeError):
        _ = mod.convert_weight_packed  # must not exist: it would switch SGLang to its AMX kernels
    table = torch.zeros(3, 6, dtype=torch.int32)
    mod.assign_req_to_token_pool_cpu(
        torch.tensor([2, 1]), table, torch.tensor([1, 0]), torch.tensor([3, 2]), torch.tensor([7, 8, 9, 10]), 6
    )
    assert table[2, 1:3].tolist() == [7, 8] and table[1, 0:2].tolist() == [9, 10] and table[0].sum() == 0


def test_server_addresses():
    assert parse_url("sglang://h:1/") == "http://h:1" and parse_url("https://h") == "https://h"
    with pytest.raises(ConfigError, match="sglang://host:port"):
        parse_url("h:1")
    assert is_server_spec("sglang://h:1") and not is_server_spec("default") and not is_server_spec("./folder")


def test_serve_needs_the_sglang_environment(tmp_path):
    from l2reason.backends.sglang.server import sglang_python

    with pytest.raises(ConfigError, match="make sglang"):
        sglang_python(tmp_path / "nope" / "python")


def test_cpu_ranks_beyond_the_numa_nodes_get_a_core_list_each(monkeypatch):
    # scale-out (issue 26): SGLang's CPU path asserts a NUMA node per rank unless SGLANG_CPU_OMP_THREADS_BIND is set
    from l2reason.serving import launch as shared

    monkeypatch.setattr(launch, "numa_nodes", lambda: 1)
    monkeypatch.setattr(shared.os, "sched_getaffinity", lambda pid: {0, 1})
    cpu = [*BASE, "--device", "cpu"]
    for sizes in (["--dp-size", "2"], ["--tp-size=2"], ["--tensor-parallel-size", "2", "--no-l2reason-plugin"]):
        assert launch.build([*cpu, *sizes], env={})[1][launch.THREADS_BIND_ENV] == "0|1"
    assert launch.THREADS_BIND_ENV not in launch.build(cpu, env={})[1]  # one rank: SGLang's own binding
    assert launch.THREADS_BIND_ENV not in launch.build([*BASE, "--device", "cuda", "--dp-size", "2"], env={})[1]
    kept = {launch.THREADS_BIND_ENV: "0|1|0|1"}
    assert launch.build([*cpu, "--tp-size", "2", "--dp-size", "2"], env=kept)[1][launch.THREADS_BIND_ENV] == "0|1|0|1"
    with pytest.raises(SystemExit, match="4 ranks on a CPU need a core each"):
        launch.build([*cpu, "--tp-size", "2", "--dp-size", "2"], env={})
    assert launch.cpu_rank_binding(["--dp-size", "2"], {}, nodes=2) == {}  # a node per rank: SGLang's own
