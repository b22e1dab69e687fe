"""The embedded in-process transformers backend."""

from l2reason.backends.hf.backend import HFBackend, LayerController, StepContext

__all__ = ["HFBackend", "LayerController", "StepContext"]
