"""What both plugin launchers share (l2reason.serving.launch): l2reason's own flags, refusals, the SAE folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from l2reason.serving.launch import SAE_DIR_ENV, l2reason_flags, refuse_flags

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "integrations" / "sglang"))
sys.path.insert(0, str(ROOT / "integrations" / "vllm"))


def test_sae_dir_becomes_the_engines_environment_and_leaves_the_command_line(tmp_path):
    plugin, args, env = l2reason_flags(["--model", "m", "--sae-dir", str(tmp_path), "--x=1"], {"A": "1"})
    assert plugin and args == ["--model", "m", "--x=1"]
    assert env == {"A": "1", SAE_DIR_ENV: str(tmp_path.resolve())}
    _, args, env = l2reason_flags([f"--sae-dir={tmp_path}", "--model", "m"], {SAE_DIR_ENV: "/elsewhere"})
    assert args == ["--model", "m"] and env[SAE_DIR_ENV] == str(tmp_path.resolve())
    # only the flag enables SAE files: an inherited value is dropped, and stock engines get none
    assert SAE_DIR_ENV not in l2reason_flags(["--model", "m"], {SAE_DIR_ENV: str(tmp_path)})[2]
    plugin, args, env = l2reason_flags(["--sae-dir", str(tmp_path), "--no-l2reason-plugin"], {})
    assert not plugin and args == [] and SAE_DIR_ENV not in env


def test_a_sae_dir_that_is_no_directory_stops_the_launch(tmp_path):
    with pytest.raises(SystemExit, match="is not a directory"):
        l2reason_flags(["--sae-dir", str(tmp_path / "nope")], {})
    with pytest.raises(SystemExit, match="needs a value"):
        l2reason_flags(["--model", "m", "--sae-dir"], {})


def test_refused_flags_name_what_they_turn_on():
    refuse_flags(["--model", "m"], {"--bad": "a bad mode"})
    with pytest.raises(SystemExit, match=r"a bad mode \(--bad\) is not supported"):
        refuse_flags(["--bad=1"], {"--bad": "a bad mode"})


def test_both_launchers_pass_the_sae_dir_to_their_engine(tmp_path):
    from l2reason_sglang import launch as sglang_launch
    from l2reason_vllm import launch as vllm_launch

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    for build, base in (
        (sglang_launch.build, ["--model-path", str(model), "--device", "cpu"]),
        (vllm_launch.build, ["--model", str(model)]),
    ):
        cmd, env = build([*base, "--sae-dir", str(tmp_path)], env={})
        assert "--sae-dir" not in cmd and env[SAE_DIR_ENV] == str(tmp_path.resolve())
        cmd, env = build([*base, "--sae-dir", str(tmp_path), "--no-l2reason-plugin"], env={})
        assert "--sae-dir" not in cmd and SAE_DIR_ENV not in env


def test_importing_the_launch_helpers_loads_neither_torch_nor_pydantic():
    code = "import sys, l2reason.serving.launch; print('torch' in sys.modules or 'pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


# ---- scale-out (issue 26) ---------------------------------------------------------------------------------------


def test_vllm_tensor_parallel_gets_a_core_list_per_rank_where_numa_nodes_are_too_few(tmp_path, monkeypatch):
    from l2reason_vllm import launch as vllm_launch

    from l2reason.serving import launch as shared

    assert shared.rank_core_lists(2, [0, 1]) == "0|1"  # one core per rank (these 2-core machines)
    assert shared.rank_core_lists(2, [3, 0, 1, 2, 7]) == "0,1|2,3"  # sorted, equal shares, leftover unused
    with pytest.raises(SystemExit, match="4 ranks on a CPU need a core each"):
        shared.rank_core_lists(4, [0, 1], env_name="X")
    assert shared.numa_nodes() >= 1
    env = vllm_launch.rank_binding_env({}, 2, nodes=1)
    assert env[vllm_launch.THREADS_BIND_ENV].count("|") == 1
    assert vllm_launch.rank_binding_env({}, 2, nodes=2) == {}  # vLLM's auto binding: a node per rank
    assert vllm_launch.rank_binding_env({}, 1, nodes=1) == {}
    kept = {vllm_launch.THREADS_BIND_ENV: "0-3|4-7"}
    assert vllm_launch.rank_binding_env(kept, 2, nodes=1) == kept  # the caller's lists win

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    monkeypatch.setattr(shared, "numa_nodes", lambda: 1)
    monkeypatch.setattr(shared.os, "sched_getaffinity", lambda pid: {0, 1})
    for extra in ([], ["--no-l2reason-plugin"]):  # the stock server gets the same binding (for comparisons)
        cmd, env = vllm_launch.build(["--model", str(model), "--tensor-parallel-size", "2", *extra], env={})
        assert env[vllm_launch.THREADS_BIND_ENV] == "0|1" and "--tensor-parallel-size" in cmd
    cmd, env = vllm_launch.build(["--model", str(model), "--data-parallel-size", "2"], env={})
    assert env[vllm_launch.THREADS_BIND_ENV] == "0|1"  # data-parallel rank d gets the d-th list
    cmd, env = vllm_launch.build(["--model", str(model)], env={})
    assert vllm_launch.THREADS_BIND_ENV not in env
    with pytest.raises(SystemExit, match="is not a number"):
        vllm_launch.build(["--model", str(model), "-tp", "two"], env={})


def test_serve_refuses_dp_for_vllm_and_names_the_engines_own_flag():
    from typer.testing import CliRunner

    from l2reason.cli import app

    out = CliRunner().invoke(app, ["serve", "--engine", "vllm", "--dp", "2"])
    assert out.exit_code != 0 and "--data-parallel-size" in out.output
