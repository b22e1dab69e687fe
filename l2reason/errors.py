"""Errors raised by l2reason.

Every error says what went wrong *and* what to do about it. They all derive
from :class:`L2ReasonError`, so ``except l2reason.L2ReasonError`` catches
anything the library raises on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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


def validation_summary(
    e: Any,
    *,
    loc_from: int = 0,
    unknown_field: str = "unknown field",
    root: str = "",
    strip: Sequence[str] = (),
) -> str:
    """A pydantic ``ValidationError`` as one short line: ``field: message; field: message``.

    Args:
        e: the ``ValidationError``.
        loc_from: location parts to drop from the front (a union's tag), unless
            nothing would be left.
        unknown_field: the message for a field the model does not have.
        root: the name of an error with no location ("" = the message alone).
        strip: endings to cut from each message (a fix the caller states once).

    Example:
        >>> import pydantic
        >>> class P(pydantic.BaseModel):
        ...     n: int
        >>> try:
        ...     P(n="x")
        ... except pydantic.ValidationError as err:
        ...     print(validation_summary(err))
        n: Input should be a valid integer, unable to parse string as an integer
    """
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"][loc_from:] or err["loc"]) or root
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = unknown_field
        for tail in strip:
            msg = msg.removesuffix(tail)
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
