"""What the engine plugins run, written once: both plugins refuse the rest with the same message.

:data:`SUPPORTED_INTERVENTIONS` is every controller of
:mod:`l2reason.techniques.controllers` plus ``sae_ablate`` (which the plugins
run themselves, at every position of a request; :mod:`l2reason.serving.ablation`).
A request whose settings ask for ``probe`` gets :func:`caps` in its first
per-token record, so a client can ask a server what its plugin can do instead
of assuming it from the engine's name, and (where the plugin passes it) how
many per-request slots it holds right now (``"active_slots"``).

Example:
    >>> sorted(SUPPORTED_INTERVENTIONS)
    ['alrr', 'erss', 'sae_ablate', 'static_steer', 'suppress']
    >>> caps()["interventions"] == sorted(SUPPORTED_INTERVENTIONS)
    True
"""

from __future__ import annotations

from functools import cache
from typing import Any

from l2reason.errors import ConfigError
from l2reason.serving.settings import EngineSettings
from l2reason.techniques.controllers import CONTROLLERS

__all__ = ["FEATURES", "SUPPORTED_INTERVENTIONS", "caps", "check_supported", "plugin_version", "read_settings"]

#: the features a plugin may name in its probe answer besides interventions
FEATURES: frozenset[str] = frozenset({"prune"})
#: the intervention kinds both engine plugins run
SUPPORTED_INTERVENTIONS: frozenset[str] = frozenset(CONTROLLERS) | {"sae_ablate"}


@cache
def plugin_version() -> str:
    """The installed l2reason's version (the plugins run the package's serving core), or ``"unknown"``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("l2reason")
    except PackageNotFoundError:
        return "unknown"


def caps(*, active_slots: int | None = None, features: tuple[str, ...] = ()) -> dict[str, Any]:
    """What a probe request gets back under ``"caps"``: the supported kinds (sorted), the plugin's
    ``"features"`` (sorted) and its version.

    Args:
        active_slots: how many per-request slots the plugin holds for *other* requests when it answers the
            probe (its table of running requests, the probe's own slot not counted: an idle server answers 0).
            None: the plugin does not say, and the record has no ``"active_slots"``. Load and fault tests read
            it (:meth:`~l2reason.backends.engine_client.EngineClient.active_slots`) to check that finished,
            refused and cancelled requests all gave their slot back.
        features: what else the plugin runs, from :data:`FEATURES` (``"prune"``: online pruning,
            :mod:`l2reason.serving.prune`). A client refuses a request that needs a feature the server's plugin
            does not name (an older plugin names none).

    Example:
        >>> caps(active_slots=0)["active_slots"]
        0
        >>> "active_slots" in caps()
        False
    """
    out: dict[str, Any] = {
        "interventions": sorted(SUPPORTED_INTERVENTIONS),
        "features": sorted(features),
        "plugin": plugin_version(),
    }
    if active_slots is not None:
        out["active_slots"] = int(active_slots)
    return out


def check_supported(settings: EngineSettings | None, engine: str) -> EngineSettings | None:
    """``settings`` when the plugin runs every intervention it asks for.

    Raises:
        ConfigError: an intervention kind the plugins do not run (the message lists the ones they do).
    """
    if settings is None:
        return None
    bad = sorted({s.kind for s in settings.interventions} - SUPPORTED_INTERVENTIONS)
    if bad:
        raise ConfigError(
            f"interventions {bad} are not supported by the {engine} plugin yet "
            f"(it runs {sorted(SUPPORTED_INTERVENTIONS)})"
        )
    return settings


def read_settings(params: dict[str, Any] | None, engine: str) -> EngineSettings | ConfigError | None:
    """A request's settings as a plugin takes them: decoded, bounded and checked against what it runs.

    Returns:
        The settings; None when the request has none; the :class:`~l2reason.errors.ConfigError` that
        rejects them (the plugin reports it in the request's records and keeps serving).
    """
    try:
        return check_supported(EngineSettings.decode(params), engine)
    except ConfigError as e:
        return e
