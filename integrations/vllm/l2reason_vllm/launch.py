"""Start vLLM's OpenAI-compatible server with the l2reason plugin: ``python -m l2reason_vllm.launch --model <m> ...``.

What it adds to ``python -m vllm.entrypoints.openai.api_server``:

- ``--hf-overrides {"architectures": ["L2<arch>"]}``: the plugin's model class
  for the checkpoint's architecture (Qwen2/Qwen2.5, Qwen3, Llama);
- ``--kv-transfer-config``: the plugin's connector, which carries each
  request's settings in and its per-token records out;
- a clear error, before anything loads, for what the plugin does not support
  yet: pipeline parallelism, speculative decoding, another KV connector, an
  architecture it has no class for;
- on vLLM's CPU build, the same OpenMP core binding as stock vLLM
  (``VLLM_CPU_NUM_OF_RESERVED_CPU``, unless set already): vLLM reserves one
  more core per worker whenever *any* KV connector is configured (meant for
  NIXL's transfer threads; ``vllm/utils/ompmultiprocessing.py``), which this
  connector does not need. On a 2-core machine that reservation leaves none
  for the engine-core and API-server processes: the worker's 2 OpenMP threads
  then share both cores with them and decode ran at ~0.4x stock's speed
  (``docs/vllm.md``, "Measured");
- on vLLM's CPU build with ``--tensor-parallel-size`` x
  ``--data-parallel-size`` = N > 1 on a machine with fewer than N NUMA nodes, an explicit per-rank core list
  (``VLLM_CPU_OMP_THREADS_BIND``, unless set already): vLLM's ``auto`` binding
  gives each rank a NUMA node of its own and refuses to start otherwise ("Not
  enough allowed NUMA nodes"); the launcher splits the cores this process may
  use into N equal, disjoint lists (2 cores, TP=2: ``0|1``, one core per rank;
  ``docs/vllm.md``, "Scale-out").

``--no-l2reason-plugin`` starts stock vLLM with the same arguments (for A/B
comparisons); ``--sae-dir DIR`` names the folder the server reads SAE files
from, by name (``sae_ablate``; without it the plugin refuses SAE ablation). See
:mod:`l2reason.serving.launch` for l2reason's own flags. Everything else goes
to vLLM unchanged.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from l2reason.serving import launch as shared
from l2reason_vllm import ARCHITECTURES

#: the plugin's KV connector (the only way it returns per-token data; see l2reason_vllm.connector)
KV_TRANSFER_CONFIG: dict[str, Any] = {
    "kv_connector": "L2ReasonConnector",
    "kv_connector_module_path": "l2reason_vllm.connector",
    "kv_role": "kv_both",
}

_UNSUPPORTED = {
    "--speculative-config": "speculative decoding",
    "--kv-transfer-config": "another KV connector (combine through vLLM's MultiConnector by hand)",
    "--hf-overrides": "--hf-overrides (the launcher sets the architecture itself)",
}
_PP = ("--pipeline-parallel-size", "-pp")
_TP = ("--tensor-parallel-size", "-tp")
_DP = ("--data-parallel-size", "-dp")
#: vLLM's CPU build: OpenMP cores kept free of the workers' threads (for its scheduler and front end)
RESERVED_CPU_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
#: vLLM's CPU build: each local rank's OpenMP cores ("auto", "nobind", or lists joined by "|")
THREADS_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def architecture(model: str) -> str:
    """The plugin's vLLM architecture name for a model folder (or hub id with a cached config)."""
    cfg_path = Path(model) / "config.json"
    if cfg_path.is_file():
        archs = json.loads(cfg_path.read_text()).get("architectures") or []
    else:
        from transformers import AutoConfig

        archs = AutoConfig.from_pretrained(model).architectures or []
    for a in archs:
        if a in ARCHITECTURES:
            return ARCHITECTURES[a]
    raise SystemExit(
        f"l2reason plugin: no l2reason class for architectures {archs}; supported: {', '.join(ARCHITECTURES)}"
    )


def plugin_args(model: str) -> list[str]:
    """The flags that select the plugin for ``model``."""
    return [
        "--hf-overrides",
        json.dumps({"architectures": [architecture(model)]}),
        "--kv-transfer-config",
        json.dumps(KV_TRANSFER_CONFIG),
    ]


def check_args(argv: list[str]) -> str:
    """The model argument; ``SystemExit`` with a clear message for a mode the plugin does not support."""
    shared.refuse_flags(argv, _UNSUPPORTED)
    shared.refuse_above_one(argv, _PP, "pipeline parallelism is not supported; use --tensor-parallel-size")
    return shared.required_flag(argv, ("--model",), "give --model <folder or hub id>")


def stock_reserved_cpus(local_world_size: int = 1, machine: str | None = None) -> int:
    """The cores vLLM 0.32's CPU build reserves for its own processes when *no* KV connector is configured.

    Mirrors ``OMPProcessManager`` (``vllm/utils/ompmultiprocessing.py``): one per local worker on
    x86/Arm/RISC-V, else one; with any ``kv_transfer_config`` vLLM adds ``local_world_size`` more.
    """
    m = (platform.machine() if machine is None else machine).lower()
    per_worker = m in ("x86_64", "amd64", "i386", "i686") or m.startswith(("arm", "aarch", "riscv"))
    return max(1, local_world_size) if per_worker else 1


def cpu_binding_env(env: Mapping[str, str], tensor_parallel_size: int = 1) -> dict[str, str]:
    """``env`` with stock vLLM's CPU core reservation for a server that has the plugin's connector.

    vLLM 0.32 reserves an extra core per worker for any KV connector (``ompmultiprocessing.py``, "reserve
    at one more core for nixl_connector"); this connector starts no threads, so the plugin server gets the
    binding stock vLLM gets. A value the caller set (``VLLM_CPU_NUM_OF_RESERVED_CPU``) is kept. No effect
    off the CPU build. Use it for offline ``vllm.LLM(kv_transfer_config=...)`` too: set these variables in
    ``os.environ`` before the engine starts.
    """
    out = dict(env)
    out.setdefault(RESERVED_CPU_ENV, str(stock_reserved_cpus(tensor_parallel_size)))
    return out


def rank_binding_env(env: Mapping[str, str], ranks: int, nodes: int | None = None) -> dict[str, str]:
    """``env`` with a per-rank core list for a CPU-build server whose ranks outnumber the NUMA nodes.

    ``ranks``: tensor-parallel size x local data-parallel size. vLLM 0.32's ``auto`` binding
    (``ompmultiprocessing.py``) binds rank i to NUMA node i and asserts there are enough nodes; a one-node
    machine then cannot start ``--tensor-parallel-size 2``. With fewer nodes than ranks, this sets
    :data:`THREADS_BIND_ENV` to :func:`l2reason.serving.launch.rank_core_lists` (vLLM hands data-parallel
    rank d the d-th group of TP lists) unless the caller set it. No effect off the CPU build (the variable
    is read there only), with one rank, or with enough nodes.
    """
    out = dict(env)
    n = shared.numa_nodes() if nodes is None else nodes
    if ranks > 1 and n < ranks and out.get(THREADS_BIND_ENV, "auto") == "auto":
        out[THREADS_BIND_ENV] = shared.rank_core_lists(ranks, env_name=THREADS_BIND_ENV)
    return out


def _size(args: list[str], flags: tuple[str, ...]) -> int:
    """The value of a parallel-size flag (1 when absent); ``SystemExit`` when it is not a number."""
    value = shared.flag_value(args, flags)
    try:
        return int(value) if value is not None else 1
    except ValueError:
        raise SystemExit(f"l2reason plugin: {flags[0]} {value!r} is not a number") from None


def build(argv: list[str], env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start vLLM's server with (or, with ``--no-l2reason-plugin``,
    without) the plugin; both get the same per-rank core binding."""
    plugin, args, env = shared.l2reason_flags(argv, env)
    tp_size = _size(args, _TP)
    if plugin:
        args += plugin_args(check_args(args))
        env = cpu_binding_env(env, tp_size)
    env = rank_binding_env(env, tp_size * _size(args, _DP))
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args], env


def main(argv: list[str] | None = None) -> None:
    shared.launch_main(build, argv)


if __name__ == "__main__":
    main()
