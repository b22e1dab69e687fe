"""The engine-plugin core: what runs *inside* a serving engine's process (SGLang, later vLLM).

Pure torch and pydantic, no engine import: an engine plugin (see the top-level
``integrations/`` folder) imports this package, feeds it the engine's batch
rows (KV slot, request id, per-request settings) and the residual stream
after each decoder layer, and sends back what it returns per token. The
controllers themselves are :mod:`l2reason.techniques.controllers`, the same
code the embedded transformers backend runs.

- :mod:`l2reason.serving.settings`: the per-request settings' wire format
  (the client encodes them into the engine's request, the plugin decodes).
- :mod:`l2reason.serving.slots`: per-slot state and the per-layer step.
"""

from l2reason.serving.settings import SETTINGS_KEY, TOKEN_KEY, EngineSettings
from l2reason.serving.slots import SlotRuntime, StepPlan

__all__ = ["SETTINGS_KEY", "TOKEN_KEY", "EngineSettings", "SlotRuntime", "StepPlan"]
