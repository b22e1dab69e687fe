"""How the plugin's forward meets vLLM's compiler and CUDA graphs (vLLM 0.32): its settings and the checks.

The plugin's layer loop (:mod:`l2reason_vllm.models`) does its ℓ2 work in two
ways, chosen per request (:func:`route`):

- **traced**: :func:`l2reason.serving.graph.graph_step` after every decoder
  layer, plain tensor code that vLLM's compiler traces into the compiled
  forward (so a CUDA graph captures it like the model's own ops). Norm
  capture always; the interventions of :attr:`PluginConfig.kinds`.
- **eager**: the opaque op ``torch.ops.l2reason.after_layer``
  (:data:`OP`), whose Python runs the reference
  :class:`~l2reason.serving.slots.SlotRuntime` at run time, for what the
  traced step does not run: ALRR (a data-dependent number of layer re-runs
  whose KV writes are undone), SAE ablation, and interventions of kinds the
  server did not trace.

A Python op inside a captured CUDA graph runs only at capture: at replay it
would record nothing and change nothing, silently. So while the op is in the
forward (:attr:`PluginConfig.eager`, the default) the plugin makes vLLM run
it outside every graph: the KV connector asks for PIECEWISE graphs
(``requires_piecewise_for_cudagraph``, which makes vLLM turn FULL and
FULL_AND_PIECEWISE into PIECEWISE), and :func:`configure_compilation` adds
:data:`OP` to ``compilation_config.splitting_ops`` next to vLLM's own (the
precedent is vLLM's own models, which append their ops there when built), so
the op runs eagerly between the replayed pieces on every step. A server
whose mode would still capture a FULL graph around the op is refused at
start-up with a message, never served.

Settings come from ``--additional-config '{"l2reason": {...}}'`` (vLLM puts
``additional_config`` into its compile-cache hash, so a changed setting is a
new compile; :func:`read_config`). This module imports no vLLM.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from l2reason.errors import ConfigError
from l2reason.serving.settings import EngineSettings

__all__ = [
    "CONFIG_KEY",
    "EAGER_KINDS",
    "OP",
    "TRACEABLE_KINDS",
    "PluginConfig",
    "configure_compilation",
    "read_config",
    "route",
]

#: the plugin's opaque per-layer op (the eager path), as vLLM's ``splitting_ops`` names it
OP = "l2reason::after_layer"
#: the key of the plugin's settings in vLLM's ``additional_config``
CONFIG_KEY = "l2reason"
#: what only the eager path runs (see the module docstring and ``docs/graph_step.md``)
EAGER_KINDS = frozenset({"alrr", "sae_ablate"})
#: the intervention kinds the traced step can run
TRACEABLE_KINDS = ("erss", "static_steer", "suppress")


@dataclass(frozen=True)
class PluginConfig:
    """The plugin's server-wide settings (``additional_config["l2reason"]``).

    Attributes:
        kinds: the intervention kinds traced into the compiled step (a subset of ERSS, static steering,
            suppression; norm capture is always traced). Every kind costs every step at every layer, used or
            not; requests asking for another kind take the eager path.
        eager: keep the opaque op in the forward for what the traced step does not run (ALRR, SAE ablation,
            untraced kinds). False: no op, CUDA graphs may stay FULL, and those requests are refused.
    """

    kinds: tuple[str, ...] = ()
    eager: bool = True


def read_config(additional_config: Any) -> PluginConfig:
    """The plugin's settings from vLLM's ``additional_config`` (a dict, or None); defaults where absent."""
    raw = (additional_config or {}).get(CONFIG_KEY, {}) if isinstance(additional_config, Mapping) else {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"l2reason: additional_config[{CONFIG_KEY!r}] must be an object, got {raw!r}")
    unknown = sorted(set(raw) - {"kinds", "eager"})
    if unknown:
        raise ConfigError(f"l2reason: unknown settings {unknown} in additional_config[{CONFIG_KEY!r}]")
    kinds = tuple(raw.get("kinds", ()))
    bad = sorted(set(kinds) - set(TRACEABLE_KINDS))
    if bad:
        raise ConfigError(f"l2reason: kinds {bad} cannot be traced; choose from {list(TRACEABLE_KINDS)}")
    return PluginConfig(kinds=kinds, eager=bool(raw.get("eager", True)))


def route(settings: EngineSettings | Exception | None, config: PluginConfig) -> str | None:
    """Which path serves a request: ``"traced"``, ``"eager"``, or None (nothing asked / settings refused).

    A request takes the eager path whole (its norms too) when it asks for anything the traced step does not
    run, so the order of its interventions within a layer stays the reference's.
    """
    if not isinstance(settings, EngineSettings):
        return None
    kinds = {s.kind for s in settings.interventions}
    if kinds & EAGER_KINDS or kinds - set(config.kinds):
        return "eager"
    return "traced"


def configure_compilation(compilation: Any, config: PluginConfig) -> str:
    """Make vLLM run the eager op outside captured graphs; the sentence for the start-up line.

    Args:
        compilation: vLLM's ``CompilationConfig`` (``cudagraph_mode``, ``splitting_ops``), changed in place:
            :data:`OP` is appended to ``splitting_ops`` when that is a list without it.
        config: the plugin's settings.

    Raises:
        ConfigError: the op is in the forward and the mode captures FULL graphs (the op would run only at
            capture: no norms, no interventions, no error).
    """
    mode = getattr(compilation, "cudagraph_mode", None)
    name = getattr(mode, "name", str(mode))
    full = bool(mode is not None and hasattr(mode, "has_full_cudagraphs") and mode.has_full_cudagraphs())
    piecewise = bool(mode is not None and hasattr(mode, "has_piecewise_cudagraphs") and mode.has_piecewise_cudagraphs())
    what = f"(norms{''.join(', ' + k for k in config.kinds)})"
    compiled = getattr(getattr(compilation, "mode", None), "name", "") != "NONE"  # NONE: --enforce-eager
    traced = f"graph step {'traced into the compiled forward' if compiled else 'run as Python (not compiled)'} {what}"
    if not config.eager:
        return f"{traced}; no eager op (ALRR and SAE ablation refused); CUDA graphs {name}"
    ops = getattr(compilation, "splitting_ops", None)
    if isinstance(ops, list) and OP not in ops:
        ops.append(OP)
    if full:
        raise ConfigError(
            f"l2reason: CUDA graph mode {name} would capture the plugin's op {OP} inside a full graph, where it "
            "runs only at capture (no norms, no interventions, no error). The plugin's KV connector asks vLLM for "
            "PIECEWISE graphs; start through `python -m l2reason_vllm.launch`, or pass "
            '-cc \'{"cudagraph_mode": "PIECEWISE"}\', or --enforce-eager'
        )
    if piecewise:
        if not isinstance(ops, list) or OP not in ops:
            raise ConfigError(f"l2reason: PIECEWISE CUDA graphs need {OP} in compilation_config.splitting_ops")
        how = f"CUDA graphs PIECEWISE, {OP} runs eagerly between the replayed pieces"
    else:
        how = f"no CUDA graphs ({name}), {OP} runs as an opaque op"
    return f"{traced}; ALRR and SAE ablation on the eager path: {how}"
