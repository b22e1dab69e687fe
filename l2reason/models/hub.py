"""Hugging Face hub ids: whether the hub can be asked, answered in about two seconds at most.

A model spec that is neither a packaged model nor a local path is taken for a
hub id, so a typo (``"defualt"``) lands here. Handed straight to
``from_pretrained``, it cost ~50 s of huggingface_hub's retry warnings on a
machine without the hub before the real error (~5 s with ``HF_HUB_OFFLINE=1``,
which only the Makefile sets). :func:`hub_kwargs` decides first, with two
checks, both cheap:

1. **Offline mode is honoured.** ``HF_HUB_OFFLINE`` (as huggingface_hub read it
   at import, or set in the environment since) or ``local_files_only=True``
   means the hub is never asked.
2. **Otherwise one probe.** A ``HEAD`` of the hub's endpoint (``HF_ENDPOINT``,
   default ``https://huggingface.co``) through huggingface_hub's own HTTP
   session, so proxy settings apply, run in a daemon thread and given up after
   :data:`PROBE_SECONDS` (name resolution can block longer than a socket
   timeout). An HTTP answer below 500 counts as reachable; no answer, or a 5xx
   (a gateway's error, or the hub's, which huggingface_hub would retry), as
   unreachable.
   It costs one round trip, and only for specs that are hub ids.

Offline or unreachable, a hub id is loaded only from the local hub cache
(``local_files_only=True``: no retries); an id that is not there, or a string
that cannot be a hub id at all, raises :class:`~l2reason.errors.ModelSourceError`
at once, with the packaged models' names and how to pass a folder. Reachable,
``from_pretrained`` asks the hub as usual (an unknown id is a quick 404 there).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from l2reason.errors import ModelSourceError
from l2reason.models.registry import did_you_mean, packaged_help

__all__ = ["PROBE_SECONDS", "hub_kwargs", "hub_reachable", "offline_mode"]

PROBE_SECONDS = 2.0  # one HEAD to the hub's front page; a healthy connection answers in well under a second

_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's ENV_VARS_TRUE_VALUES


def offline_mode() -> bool:
    """True when ``HF_HUB_OFFLINE`` is on, whether huggingface_hub saw it at import or it was set since."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """Whether the hub's endpoint answers an HTTP ``HEAD`` (status < 500) within ``timeout`` seconds."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    finished = threading.Event()
    answered: list[bool] = []  # the probe's verdict, when it came

    def probe() -> None:
        try:
            status = get_session().head(constants.ENDPOINT, timeout=timeout).status_code
            answered.append(status < 500)
        except Exception:  # any failure to get an answer (DNS, refused, TLS, timeout) means "not reachable"
            pass
        finally:
            finished.set()

    threading.Thread(target=probe, name="l2reason-hub-probe", daemon=True).start()
    finished.wait(timeout + 0.5)
    return bool(answered and answered[0])


def _cached(repo_id: str, hf_kwargs: dict[str, Any]) -> bool:
    """Whether the local hub cache holds ``repo_id``'s ``config.json`` (at the requested revision)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        repo_id, "config.json", cache_dir=hf_kwargs.get("cache_dir"), revision=hf_kwargs.get("revision")
    )
    return isinstance(found, str)


def unknown_model(spec: str, why: str) -> ModelSourceError:
    """The error for a spec that names no model we can load, with the packaged names and how to pass a folder."""
    return ModelSourceError(
        f"unknown model {spec!r}{did_you_mean(spec)}: it is neither a packaged model ({packaged_help()}), "
        f"a .gguf file, a local folder, nor a Hugging Face id {why}. For a model of your own, pass the path "
        "of a transformers model folder (with config.json) or of a .gguf file"
    )


def hub_kwargs(spec: str, hf_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``from_pretrained`` keyword arguments for hub id ``spec``, or a quick :class:`ModelSourceError`.

    Adds ``local_files_only=True`` when the hub is offline or unreachable and
    the id is in the local cache; raises when it is not, or when ``spec`` is
    not a valid hub id (a missing path, a name with spaces).
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError as e:
        raise unknown_model(spec, "(no file or folder of that name exists, and it is not a valid hub id)") from e
    if hf_kwargs.get("local_files_only") or offline_mode():
        why = "in the local hub cache (offline: HF_HUB_OFFLINE or local_files_only is set)"
    elif hub_reachable():
        return hf_kwargs
    else:
        why = f"in the local hub cache (the hub, {_endpoint()}, did not answer within {PROBE_SECONDS:g} s)"
    if not _cached(spec, hf_kwargs):
        raise unknown_model(spec, why)
    return {**hf_kwargs, "local_files_only": True}


def _endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)
