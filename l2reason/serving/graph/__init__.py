"""The graph-safe ℓ2 step: per-slot device tables and a per-layer step a CUDA graph can capture once.

Engine-neutral, like the rest of :mod:`l2reason.serving`: an engine plugin
owns one :class:`SlotTables` per model replica, admits and releases requests
between steps, binds each step's token → slot map before the forward, calls
:func:`graph_step` after every decoder layer inside the (captured) forward,
and reads the records after it. ``docs/graph_step.md`` has the design, what
is and is not graph-safe, and the integration plan for vLLM and SGLang.

- :mod:`l2reason.serving.graph.buffers`: every persistent buffer, shape by shape.
- :mod:`l2reason.serving.graph.tables`: :class:`SlotTables` (admission, token map, records).
- :mod:`l2reason.serving.graph.step`: :func:`graph_step`.
- :mod:`l2reason.serving.graph.records`: the host side (per-slot settings, the one read per step).
"""

from __future__ import annotations

from l2reason.serving.graph.step import Rerun, graph_step
from l2reason.serving.graph.tables import SlotTables, StepConfig

__all__ = ["Rerun", "SlotTables", "StepConfig", "graph_step"]
