"""The model as the controllers see it inside an engine (:class:`~l2reason.techniques.controllers.ModelInfo`).

Both plugins build one from their engine's model config. Calibrated
thresholds need the model's calibration file, which the plugins do not load
yet, so :meth:`EngineModelInfo.calibrated_tau` says so (the request gets the
message as its error; the adaptive threshold works).

Example:
    >>> import torch
    >>> info = EngineModelInfo("vLLM", num_layers=24, hidden_size=896, dtype=torch.bfloat16)
    >>> info.num_layers, info.hidden_size
    (24, 896)
"""

from __future__ import annotations

import torch

from l2reason.errors import ConfigError

__all__ = ["EngineModelInfo"]


class EngineModelInfo:
    """The served model's shape for the controllers.

    Args:
        engine: the engine's name, for messages (``"SGLang"``, ``"vLLM"``).
        num_layers: decoder layers.
        hidden_size: d, the residual stream's width.
        dtype: the model's dtype (controller state is kept in it).
    """

    def __init__(self, engine: str, *, num_layers: int, hidden_size: int, dtype: torch.dtype) -> None:
        self.engine = engine
        self.num_layers, self.hidden_size, self.dtype = num_layers, hidden_size, dtype

    def calibrated_tau(self, layers: list[int], what: str, alternative: str) -> torch.Tensor:
        """Not available in the plugins yet: always a :class:`~l2reason.errors.ConfigError` naming ``what``."""
        raise ConfigError(
            f"{what}: calibrated thresholds are not available in the {self.engine} plugin yet; {alternative}"
        )
