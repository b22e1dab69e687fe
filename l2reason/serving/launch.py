"""What the engine plugins' launchers share: l2reason's own flags, refusing modes, handing over to the engine.

Both launchers (``python -m l2reason_sglang.launch``, ``python -m l2reason_vllm.launch``)
run in the engine's environment before the engine loads, so this module uses the
standard library only. A launcher reads l2reason's own flags off the command line
(:func:`l2reason_flags`), refuses what its plugin cannot run (:func:`refuse_flags`),
adds its engine's flags and environment, and replaces itself with the engine's
server (:func:`launch_main`). The client side (``l2reason.backends.engine_server``)
imports :data:`NO_PLUGIN_FLAG` from here to build the same command lines.

l2reason's flags (removed before the engine sees the command line):

- ``--no-l2reason-plugin`` (:data:`NO_PLUGIN_FLAG`): start the stock engine with
  the same set-up, for comparisons;
- ``--sae-dir DIR`` (:data:`SAE_DIR_FLAG`): the one directory the server reads SAE
  files from (the ``sae_ablate`` intervention names a file in it); passed to the
  engine's processes as ``$L2REASON_SAE_DIR`` (:data:`SAE_DIR_ENV`). Without it
  the server refuses ``sae_ablate`` (see :mod:`l2reason.serving.ablation`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "NO_PLUGIN_FLAG",
    "SAE_DIR_ENV",
    "SAE_DIR_FLAG",
    "exec_launch",
    "flag_value",
    "launch_main",
    "l2reason_flags",
    "numa_nodes",
    "rank_core_lists",
    "refuse_above_one",
    "refuse_flags",
    "required_flag",
]

#: the launcher flag that starts the stock engine (no plugin) with the same set-up, for comparisons
NO_PLUGIN_FLAG = "--no-l2reason-plugin"
#: the launcher flag naming the directory the server serves SAE files from
SAE_DIR_FLAG = "--sae-dir"
#: how the engine's processes learn that directory (set by the launcher from :data:`SAE_DIR_FLAG` only)
SAE_DIR_ENV = "L2REASON_SAE_DIR"


def flag_value(argv: Sequence[str], flags: Sequence[str]) -> str | None:
    """The value of the first of ``flags`` in a command line (``--flag v`` or ``--flag=v``), else None.

    Example:
        >>> flag_value(["--model", "m", "--tp=2"], ("--tp", "--tensor-parallel-size"))
        '2'
    """
    for i, a in enumerate(argv):
        for f in flags:
            if a == f and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(f + "="):
                return a.split("=", 1)[1]
    return None


def _without_flag(argv: Sequence[str], flag: str) -> tuple[list[str], str | None]:
    """``argv`` without ``flag`` and its value (``--flag v`` / ``--flag=v``), and the (last) value."""
    out: list[str] = []
    value: str | None = None
    it = iter(argv)
    for a in it:
        if a == flag:
            value = next(it, None)
            if value is None:
                raise SystemExit(f"l2reason plugin: {flag} needs a value")
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
        else:
            out.append(a)
    return out, value


def l2reason_flags(
    argv: Sequence[str], env: Mapping[str, str] | None = None, *, own: Sequence[str] = ()
) -> tuple[bool, list[str], dict[str, str]]:
    """Read l2reason's own flags off a launcher's command line.

    Args:
        argv: the launcher's arguments.
        env: the environment to start from (default: this process's).
        own: more bare flags of this launcher to drop (e.g. SGLang's ``--no-cpu-standin``).

    Returns:
        ``(plugin, args, env)``: whether the plugin is on; the arguments without
        l2reason's flags; the environment with :data:`SAE_DIR_ENV` set to the
        ``--sae-dir`` folder (resolved, checked to be a directory) or removed
        (an inherited value never enables SAE files: only the flag does).

    Raises:
        SystemExit: ``--sae-dir`` names no directory.

    Example:
        >>> l2reason_flags(["--model", "m", "--no-l2reason-plugin"], {})
        (False, ['--model', 'm'], {})
    """
    plugin = NO_PLUGIN_FLAG not in argv
    args, sae_dir = _without_flag([a for a in argv if a != NO_PLUGIN_FLAG and a not in own], SAE_DIR_FLAG)
    out = dict(os.environ if env is None else env)
    out.pop(SAE_DIR_ENV, None)
    if sae_dir is not None and plugin:
        real = os.path.realpath(sae_dir)
        if not os.path.isdir(real):
            raise SystemExit(f"l2reason plugin: {SAE_DIR_FLAG} {sae_dir!r} is not a directory")
        out[SAE_DIR_ENV] = real
    return plugin, args, out


def refuse_flags(argv: Sequence[str], refused: Mapping[str, str]) -> None:
    """``SystemExit`` naming the first flag of ``refused`` (flag -> what it turns on) present in ``argv``."""
    for flag, what in refused.items():
        if any(a == flag or a.startswith(flag + "=") for a in argv):
            raise SystemExit(f"l2reason plugin: {what} ({flag}) is not supported; start without it")


def refuse_above_one(argv: Sequence[str], flags: Sequence[str], message: str) -> None:
    """``SystemExit`` (``message``) when the first of ``flags`` (a size: parallelism) is given and is not 1."""
    value = flag_value(argv, flags)
    if value is not None and value != "1":
        raise SystemExit(f"l2reason plugin: {message}")


def required_flag(argv: Sequence[str], flags: Sequence[str], message: str) -> str:
    """The value of the first of ``flags``; ``SystemExit`` (``message``) when none is given."""
    value = flag_value(argv, flags)
    if value is None:
        raise SystemExit(f"l2reason plugin: {message}")
    return value


def numa_nodes() -> int:
    """How many NUMA nodes Linux reports (``/sys/devices/system/node/node<i>``); 1 where it reports none."""
    nodes = "/sys/devices/system/node"
    found = [d for d in os.listdir(nodes) if d.startswith("node") and d[4:].isdigit()] if os.path.isdir(nodes) else []
    return max(1, len(found))


def rank_core_lists(ranks: int, cores: Sequence[int] | None = None, *, env_name: str = "the bind variable") -> str:
    """A per-rank core binding (``"0|1"``, ``"0,1|2,3"``) giving each of ``ranks`` an equal share of ``cores``.

    Both engines' CPU builds bind rank i to NUMA node i unless told otherwise, and refuse to start with more
    ranks than nodes; their ``*_CPU_OMP_THREADS_BIND`` variables take this format instead. ``cores``: the
    cores to split (default: the ones this process may run on); the lists are disjoint, contiguous in core
    order, and leftover cores go unused.

    Raises:
        SystemExit: fewer cores than ranks (``env_name``: the variable to set by hand, for the message).

    Example:
        >>> rank_core_lists(2, [3, 0, 1, 2, 7])
        '0,1|2,3'
    """
    cpus = sorted(os.sched_getaffinity(0) if cores is None else cores)
    if len(cpus) < ranks:
        raise SystemExit(
            f"l2reason plugin: {ranks} ranks on a CPU need a core each; this process may use {len(cpus)} "
            f"(set {env_name} by hand)"
        )
    per = len(cpus) // ranks
    return "|".join(",".join(map(str, cpus[i * per : (i + 1) * per])) for i in range(ranks))


def exec_launch(cmd: Sequence[str], env: Mapping[str, str]) -> None:
    """Replace this process with the engine's server (the plugin launchers' last step); the command goes to stderr."""
    sys.stderr.write(f"l2reason plugin: {' '.join(cmd[1:])}\n")
    sys.stderr.flush()
    os.execvpe(cmd[0], list(cmd), dict(env))


def launch_main(
    build: Callable[[list[str]], tuple[list[str], dict[str, str]]], argv: Sequence[str] | None = None
) -> None:
    """A launcher's ``main``: build the engine's command line from ``argv`` (default: ``sys.argv[1:]``) and run it."""
    cmd, env = build(list(sys.argv[1:] if argv is None else argv))
    exec_launch(cmd, env)
