"""The ℓ2-norm signal: per-token norms, layer bands, statistics and thresholds.

Pure tensor functions (no model, no I/O except calibration files). The online
pieces (:func:`p2_update`, :func:`tau_update`, :func:`tau_value`) are
fixed-shape and compile with ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from l2reason.signal.band import LayerSpec, default_band, resolve_layers
from l2reason.signal.calibration import (
    Calibration,
    default_calibration_path,
    fit_calibration,
)
from l2reason.signal.certainty import self_certainty
from l2reason.signal.norms import MASSIVE_FACTOR, massive_activation_mask, token_norms
from l2reason.signal.p2 import P2State, p2_init, p2_update, p2_value
from l2reason.signal.stats import ABCDStats, abcd_stats, normalized_scores
from l2reason.signal.threshold import (
    TauState,
    iqr_threshold,
    tau_init,
    tau_update,
    tau_value,
)

__all__ = [
    "MASSIVE_FACTOR",
    "ABCDStats",
    "Calibration",
    "LayerSpec",
    "P2State",
    "TauState",
    "abcd_stats",
    "default_band",
    "default_calibration_path",
    "fit_calibration",
    "iqr_threshold",
    "massive_activation_mask",
    "normalized_scores",
    "p2_init",
    "p2_update",
    "p2_value",
    "resolve_layers",
    "self_certainty",
    "tau_init",
    "tau_update",
    "tau_value",
    "token_norms",
]
