"""Start SGLang with the l2reason plugin: ``python -m l2reason_sglang.launch <sglang launch_server args>``.

What it adds to SGLang's own ``sglang.launch_server``:

- ``SGLANG_EXTERNAL_MODEL_PACKAGE=l2reason_sglang.models``, so SGLang builds the
  plugin's classes for Qwen2/Qwen2.5, Qwen3 and Llama checkpoints;
- a clear error, before anything loads, for modes the plugin does not support
  yet: pipeline parallelism, DP attention, speculative decoding, mixed chunked
  prefill, context parallelism, torch.compile capture;
- nothing about CUDA graphs: the plugin's per-layer step is graph-safe (SGLang
  captures it with the decode graph; passes holding an ALRR or ``sae_ablate``
  request run eagerly, see ``docs/sglang.md``);
- with ``--device cpu``, SGLang's CPU engine (``SGLANG_USE_CPU_ENGINE=1``) and,
  unless ``--no-cpu-standin`` is given, the pure-torch stand-in for SGLang's
  kernel package (``l2reason_sglang/standin``): the package registry has no
  CPU build of it. The stand-in is test infrastructure for CPU machines; it
  is never put on the path for a GPU server; with more ranks
  (``--tp-size`` x ``--dp-size``) than NUMA nodes, a core list per rank
  (``SGLANG_CPU_OMP_THREADS_BIND``, unless set; :func:`cpu_rank_binding`);
- ``--sae-dir DIR``: the folder the server reads SAE files from, by name
  (``sae_ablate``); without it the plugin refuses SAE ablation. See
  :mod:`l2reason.serving.launch` for l2reason's own flags.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from l2reason.serving.launch import (
    flag_value,
    l2reason_flags,
    launch_main,
    numa_nodes,
    rank_core_lists,
    refuse_above_one,
    refuse_flags,
    required_flag,
)

PACKAGE = "l2reason_sglang.models"
STANDIN_DIR = Path(__file__).resolve().parent / "standin"

#: flag -> why the plugin refuses it (checked on the command line before SGLang starts)
_UNSUPPORTED_FLAGS = {
    "--enable-dp-attention": "DP attention",
    "--speculative-algorithm": "speculative decoding",
    "--enable-mixed-chunk": "mixed chunked prefill",
    "--enable-prefill-cp": "context-parallel prefill",
    # torch.compile of the whole forward (and the CPU graph runner): not tried with the plugin's loop, whose
    # eager path branches in Python (SGLang 0.5.23's CPU graph runner does not start here anyway: docs/sglang.md)
    "--enable-torch-compile": "torch.compile graph capture",
}
_PP_FLAGS = ("--pp-size", "--pipeline-parallel-size", "--pp")
_TP_FLAGS = ("--tp-size", "--tensor-parallel-size")
_DP_FLAGS = ("--dp-size", "--data-parallel-size")
#: SGLang's CPU path: each rank's cores ("all" = a NUMA node per rank, or lists joined by "|")
THREADS_BIND_ENV = "SGLANG_CPU_OMP_THREADS_BIND"


def check_args(argv: list[str]) -> None:
    """Raise ``SystemExit`` with a clear message for a mode the plugin does not support."""
    refuse_flags(argv, _UNSUPPORTED_FLAGS)
    refuse_above_one(argv, _PP_FLAGS, "pipeline parallelism is not supported; use --tp-size / --dp-size")
    refuse_above_one(argv, ("--attn-cp-size",), "context-parallel attention (--attn-cp-size) is not supported yet")
    required_flag(argv, ("--model-path", "--model"), "give --model-path <folder or hub id>")


def cpu_rank_binding(args: list[str], env: dict[str, str], nodes: int | None = None) -> dict[str, str]:
    """``env`` with a core list per rank for a CPU server whose ranks (``--tp-size`` x ``--dp-size``) outnumber
    the NUMA nodes.

    SGLang 0.5.23's CPU path gives rank i NUMA node i and asserts there are enough nodes unless
    :data:`THREADS_BIND_ENV` lists cores per rank; on a one-node machine ``--dp-size 2`` or ``--tp-size 2``
    then does not start. This sets the variable to an equal split of the cores this process may use
    (:func:`l2reason.serving.launch.rank_core_lists`) unless the caller set it. (SGLang applies the binding
    only with its real CPU kernels; with the stand-in the list is checked, not used.)
    """
    sizes = [flag_value(args, flags) or "1" for flags in (_TP_FLAGS, _DP_FLAGS)]
    try:
        ranks = int(sizes[0]) * int(sizes[1])
    except ValueError:
        raise SystemExit(f"l2reason plugin: --tp-size / --dp-size {sizes} are not numbers") from None
    out = dict(env)
    if ranks > (numa_nodes() if nodes is None else nodes) and THREADS_BIND_ENV not in out:
        out[THREADS_BIND_ENV] = rank_core_lists(ranks, env_name=THREADS_BIND_ENV)
    return out


def build(argv: list[str], env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start SGLang with the plugin.

    ``--no-l2reason-plugin`` starts stock SGLang with the same CPU set-up (for A/B comparisons).
    """
    plugin, args, env = l2reason_flags(argv, env, own=("--no-cpu-standin",))
    if plugin:
        check_args(args)
        env["SGLANG_EXTERNAL_MODEL_PACKAGE"] = PACKAGE
    else:
        env.pop("SGLANG_EXTERNAL_MODEL_PACKAGE", None)
    device = flag_value(args, ("--device",))
    if device == "cpu":
        env["SGLANG_USE_CPU_ENGINE"] = "1"
        if "--no-cpu-standin" not in argv:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(STANDIN_DIR), env.get("PYTHONPATH", "")) if p)
        env = cpu_rank_binding(args, env)
    return [sys.executable, "-m", "sglang.launch_server", *args], env


def main(argv: list[str] | None = None) -> None:
    launch_main(build, argv)


if __name__ == "__main__":
    main()
