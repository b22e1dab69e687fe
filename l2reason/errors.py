"""Errors raised by l2reason.

Every error says what went wrong *and* what to do about it. They all derive
from :class:`L2ReasonError`, so ``except l2reason.L2ReasonError`` catches
anything the library raises on purpose.
"""

from __future__ import annotations


class L2ReasonError(Exception):
    """Base class of every error l2reason raises on purpose."""


class ConfigError(L2ReasonError, ValueError):
    """A configuration or request is invalid (bad field, out-of-range value)."""


class LayerError(ConfigError):
    """A layer index is outside the model, or a layer list is malformed."""


class ModelSourceError(L2ReasonError):
    """A model spec cannot be resolved or its files are missing or corrupt."""


class CalibrationError(L2ReasonError, ValueError):
    """A calibration file is missing, corrupt, for another model, or holds NaN/inf."""


class CapabilityError(L2ReasonError):
    """The backend cannot do what the request asks (e.g. recursion over HTTP)."""


class BackendError(L2ReasonError, RuntimeError):
    """A backend failed while serving a request (dead server, generation error)."""


class PartialResultsError(BackendError):
    """A batch failed part-way: ``results`` keeps what finished (``None`` where a request failed).

    Raised by ``generate_many`` when a later group of requests fails after
    earlier groups finished; ``__cause__`` is the original error and
    ``failed`` lists the positions of the requests without a result.
    """

    def __init__(self, message: str, results: list, failed: list[int]) -> None:
        super().__init__(message)
        self.results = results
        self.failed = failed


class L2ReasonWarning(UserWarning):
    """Something went wrong that l2reason handled without failing (e.g. a candidate stopped on a non-finite state)."""
