"""l2reason: the ℓ2 norm of an LLM's residual stream as a signal for reasoning programs.

The flat public namespace is loaded lazily: ``import l2reason`` imports
neither torch-heavy backends nor dspy, langchain, sglang or matplotlib until
you touch the name that needs them.

Example:
    >>> import l2reason
    >>> backend = l2reason.HFBackend("default")  # doctest: +SKIP
    >>> result = backend.generate(l2reason.GenerationRequest(prompt="2+2="))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from l2reason.errors import (
    BackendError,
    CalibrationError,
    CapabilityError,
    ConfigError,
    L2ReasonError,
    LayerError,
    ModelSourceError,
)

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    # models
    "load_model": "l2reason.models",
    "LoadedModel": "l2reason.models",
    "DEFAULT_MODEL": "l2reason.models",
    "FAST_MODEL": "l2reason.models",
    # protocol + backends
    "GenerationRequest": "l2reason.backends.base",
    "GenerationResult": "l2reason.backends.base",
    "Message": "l2reason.backends.base",
    "SamplingParams": "l2reason.backends.base",
    "NormSpec": "l2reason.backends.base",
    "NormStats": "l2reason.backends.base",
    "Candidate": "l2reason.backends.base",
    "Capabilities": "l2reason.backends.base",
    "Backend": "l2reason.backends.base",
    "StreamEvent": "l2reason.backends.base",
    "HFBackend": "l2reason.backends.hf",
    # signal
    "Calibration": "l2reason.signal.calibration",
    "default_band": "l2reason.signal.band",
    # selection over stored results
    "select_result": "l2reason.select",
    "SelectionSpec": "l2reason.backends.base",
    # DSPy (imports dspy on first use)
    "configure_dspy": "l2reason.dspy",
    "l2_lm": "l2reason.dspy",
    "L2Engine": "l2reason.dspy",
    "L2SelectBest": "l2reason.dspy",
    "L2Steer": "l2reason.dspy",
    "L2Recurse": "l2reason.dspy",
    "L2Observe": "l2reason.dspy",
    "l2_metric": "l2reason.dspy",
    "l2_combined": "l2reason.dspy",
}

__all__ = [
    "BackendError",
    "CalibrationError",
    "CapabilityError",
    "ConfigError",
    "L2ReasonError",
    "LayerError",
    "ModelSourceError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'l2reason' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from l2reason.backends.base import (
        Backend,
        Candidate,
        Capabilities,
        GenerationRequest,
        GenerationResult,
        Message,
        NormSpec,
        NormStats,
        SamplingParams,
        StreamEvent,
    )
    from l2reason.backends.hf import HFBackend
    from l2reason.models import DEFAULT_MODEL, FAST_MODEL, LoadedModel, load_model
    from l2reason.signal.band import default_band
    from l2reason.signal.calibration import Calibration
