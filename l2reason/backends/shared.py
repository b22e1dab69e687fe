"""Backends shared by name within a process (loading a model is expensive).

Used by the DSPy engine (to reload saved programs) and the LangChain adapter.
"""

from __future__ import annotations

import threading
from typing import Any

from l2reason.errors import ConfigError

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


def check_spec(spec: Any) -> None:
    """Check a model spec's form without loading a model or contacting a server (:func:`make_backend` does it
    first).

    Server addresses (``parse_address`` of the engine's client) and ``vllm:<model>?…`` options
    (:func:`parse_vllm_spec`) are checked; other specs (packaged names, files, hub ids) are resolved when loaded.

    Raises:
        ConfigError: the spec is not a string, or a server address or ``vllm:`` option is malformed.

    Example:
        >>> check_spec("vllm://127.0.0.1:8000")  # well formed: nothing to say
        >>> check_spec("sglang://127.0.0.1:99999")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        l2reason.errors.ConfigError: the port '99999' in an SGLang server address ... is not a number from 1 to 65535
    """
    if not isinstance(spec, str):
        raise ConfigError(f"a model spec must be a string, got {type(spec).__name__}")
    if spec.startswith("vllm://"):
        from l2reason.backends.vllm import VLLMBackend

        VLLMBackend.parse_address(spec)
    elif is_vllm_spec(spec):
        parse_vllm_spec(spec)
    elif is_server_spec(spec):
        from l2reason.backends.sglang import SGLangBackend

        SGLangBackend.parse_address(spec)


def is_vllm_spec(spec: str) -> bool:
    """True for ``vllm://host:port`` (a running server) and ``vllm:<model>`` (start one for this process)."""
    return spec.startswith("vllm:")


#: ``vllm:<model>?key=value&…`` options: the :class:`~l2reason.backends.vllm.server.VLLMServer` arguments a
#: spec may set, with their types.
VLLM_SPEC_OPTIONS: dict[str, type] = {
    "dtype": str,
    "max_model_len": int,
    "max_num_seqs": int,
    "eager": bool,
    "tp": int,
    "start_timeout": int,  # seconds to wait for the server to be ready (VLLMBackend.launch's timeout)
    "sae_dir": str,  # the folder the server reads SAE files from, by name (sae_ablate)
}
VLLM_DTYPES = ("auto", "bfloat16", "float16", "float32")


def parse_vllm_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``vllm:<model>[?key=value&…]`` into the model and the server's options.

    Options: ``dtype`` (``auto``, ``bfloat16`` — the default —, ``float16``, ``float32``), ``max_model_len``,
    ``max_num_seqs``, ``tp``, ``start_timeout`` (seconds; default 900) (integers), ``sae_dir`` (the folder the
    server reads SAE files from, by name) and ``eager``
    (``true``/``false``/``1``/``0``: skip torch.compile, which starts in ~2 minutes instead of 5–15 on a CPU).

    Raises:
        ConfigError: an unknown option, a value of the wrong type, or an option given twice.

    Example:
        >>> parse_vllm_spec("vllm:default?dtype=float32&max_model_len=2048")
        ('default', {'dtype': 'float32', 'max_model_len': 2048})
    """
    body = spec[len("vllm:") :] if spec.startswith("vllm:") else spec
    model, _, query = body.partition("?")
    opts: dict[str, Any] = {}
    for part in filter(None, query.split("&")):
        key, eq, raw = part.partition("=")
        key = key.strip().replace("-", "_")
        if key not in VLLM_SPEC_OPTIONS:
            raise ConfigError(
                f"unknown option {key!r} in model spec {spec!r}; a vllm:<model>?… spec takes "
                f"{', '.join(VLLM_SPEC_OPTIONS)} (other `vllm serve` flags: start the server yourself with "
                "`l2reason serve --engine vllm -- FLAGS` and use vllm://host:port)"
            )
        if not eq or not raw.strip():
            raise ConfigError(f"option {key!r} in model spec {spec!r} has no value (write {key}=VALUE)")
        if key in opts:
            raise ConfigError(f"option {key!r} is given twice in model spec {spec!r}")
        raw = raw.strip()
        kind = VLLM_SPEC_OPTIONS[key]
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ConfigError(f"option {key!r} in model spec {spec!r} must be true or false, got {raw!r}")
            opts[key] = raw.lower() in ("true", "1")
        elif kind is int:
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError(f"option {key!r} in model spec {spec!r} must be an integer, got {raw!r}") from None
            if value < 1:
                raise ConfigError(f"option {key!r} in model spec {spec!r} must be at least 1, got {value}")
            opts[key] = value
        else:
            if key == "dtype" and raw not in VLLM_DTYPES:
                raise ConfigError(f"dtype {raw!r} in model spec {spec!r} is not one of {', '.join(VLLM_DTYPES)}")
            opts[key] = raw
    return model or "default", opts


def make_backend(spec: str, **kwargs: Any) -> Any:
    """A new backend for a model spec: an SGLang server address gives an
    :class:`~l2reason.backends.sglang.SGLangBackend`; ``vllm://host:port`` a
    :class:`~l2reason.backends.vllm.VLLMBackend` of that server and
    ``vllm:<model>`` one of a vLLM server it starts (and stops at exit; needs
    ``make vllm``; ``vllm:<model>?dtype=float32&max_model_len=2048`` sets that server's options, see
    :func:`parse_vllm_spec`); anything else an :class:`~l2reason.backends.hf.HFBackend`
    (packaged name, .gguf, folder, hub id).

    Example:
        >>> be = make_backend("sglang://127.0.0.1:30000")  # doctest: +SKIP
        >>> be = make_backend("vllm:default")  # doctest: +SKIP

    Raises:
        ConfigError: a malformed spec (:func:`check_spec`), before anything is loaded or contacted.
    """
    check_spec(spec)
    if spec.startswith("vllm://"):
        from l2reason.backends.vllm import VLLMBackend

        return VLLMBackend(spec, **kwargs)
    if is_vllm_spec(spec):
        from l2reason.backends.vllm import VLLMBackend

        model, opts = parse_vllm_spec(spec)
        if "start_timeout" in opts:
            kwargs.setdefault("timeout", float(opts.pop("start_timeout")))
        return VLLMBackend.launch(model, **opts, **kwargs)
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
