"""The engine-plugin core: what runs *inside* a serving engine's process (SGLang, vLLM).

Pure torch and pydantic, no engine import: an engine plugin (see the top-level
``integrations/`` folder) imports this package, feeds it the engine's batch
rows (KV slot, request id, per-request settings) and the residual stream
after each decoder layer, and sends back what it returns per token. The
controllers themselves are :mod:`l2reason.techniques.controllers`, the same
code the embedded transformers backend runs. A plugin file holds only its
engine's glue; everything engine-neutral is here:

- :mod:`l2reason.serving.settings`: the per-request settings' wire format
  (the client encodes them into the engine's request, the plugin decodes),
  with the bounds that keep one request from exhausting the server.
- :mod:`l2reason.serving.capabilities`: what the plugins run
  (:data:`~l2reason.serving.capabilities.SUPPORTED_INTERVENTIONS`), the check
  that refuses the rest, and the ``caps`` a probe request gets back.
- :mod:`l2reason.serving.slots`: per-slot state and the per-layer step.
- :mod:`l2reason.serving.ablation`: SAE ablation (``sae_ablate``): SAE files
  served by name from the ``--sae-dir`` folder only, checked against the
  model, grouped into the rows each ablation changes.
- :mod:`l2reason.serving.info`: the model as the controllers see it.
- :mod:`l2reason.serving.launch`: what the plugin launchers share (standard
  library only; importing it loads neither torch nor pydantic).

The names below load lazily, so ``import l2reason.serving.launch`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["SETTINGS_KEY", "TOKEN_KEY", "EngineSettings", "SlotRuntime", "StepPlan"]


def __getattr__(name: str) -> Any:
    """The public names, imported on first use (the wire format needs pydantic, the runtime torch)."""
    if name in ("SETTINGS_KEY", "TOKEN_KEY", "EngineSettings"):
        from l2reason.serving import settings as mod
    elif name in ("SlotRuntime", "StepPlan"):
        from l2reason.serving import slots as mod  # type: ignore[no-redef]
    else:
        raise AttributeError(f"module 'l2reason.serving' has no attribute {name!r}")
    return getattr(mod, name)


if TYPE_CHECKING:  # pragma: no cover
    from l2reason.serving.settings import SETTINGS_KEY, TOKEN_KEY, EngineSettings
    from l2reason.serving.slots import SlotRuntime, StepPlan
