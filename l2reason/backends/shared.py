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


def is_server_spec(spec: str) -> bool:
    """True for a model spec that names a server (``sglang://host:port``, ``vllm://host:port``, ``http(s)://…``)."""
    return spec.startswith(("sglang://", "vllm://", "http://", "https://"))


def is_vllm_spec(spec: str) -> bool:
    """True for ``vllm://host:port`` (a running server) and ``vllm:<model>`` (start one for this process)."""
    return spec.startswith("vllm:")


def make_backend(spec: str, **kwargs: Any) -> Any:
    """A new backend for a model spec: an SGLang server address gives an
    :class:`~l2reason.backends.sglang.SGLangBackend`; ``vllm://host:port`` a
    :class:`~l2reason.backends.vllm.VLLMBackend` of that server and
    ``vllm:<model>`` one of a vLLM server it starts (and stops at exit; needs
    ``make vllm``); anything else an :class:`~l2reason.backends.hf.HFBackend`
    (packaged name, .gguf, folder, hub id).

    Example:
        >>> be = make_backend("sglang://127.0.0.1:30000")  # doctest: +SKIP
        >>> be = make_backend("vllm:default")  # doctest: +SKIP
    """
    if spec.startswith("vllm://"):
        from l2reason.backends.vllm import VLLMBackend

        return VLLMBackend(spec, **kwargs)
    if is_vllm_spec(spec):
        from l2reason.backends.vllm import VLLMBackend

        return VLLMBackend.launch(spec[len("vllm:") :] or "default", **kwargs)
    if is_server_spec(spec):
        from l2reason.backends.sglang import SGLangBackend

        return SGLangBackend(spec, **kwargs)
    from l2reason.backends.hf import HFBackend

    return HFBackend(spec, **kwargs)


def get_backend(name: str) -> Any:
    """The backend registered as ``name``; else :func:`make_backend` it once and register it."""
    with _BACKENDS_LOCK:
        be = _BACKENDS.get(name)
        if be is None:
            be = make_backend(name)
            _BACKENDS[name] = be
        return be
