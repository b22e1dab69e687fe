"""Backends shared by name within a process (loading a model is expensive).

Used by the DSPy engine (to reload saved programs) and the LangChain adapter.
"""

from __future__ import annotations

import threading
from typing import Any

_BACKENDS: dict[str, Any] = {}
_BACKENDS_LOCK = threading.Lock()


def register_backend(name: str, backend: Any) -> None:
    """Make ``backend`` findable by ``name`` (used when loading a saved program).

    Example:
        >>> register_backend("my-model", backend)  # doctest: +SKIP
    """
    with _BACKENDS_LOCK:
        _BACKENDS[name] = backend


def get_backend(name: str) -> Any:
    """The backend registered as ``name``; else load ``HFBackend(name)`` once and register it."""
    with _BACKENDS_LOCK:
        be = _BACKENDS.get(name)
        if be is None:
            from l2reason.backends.hf import HFBackend

            be = HFBackend(name)
            _BACKENDS[name] = be
        return be
