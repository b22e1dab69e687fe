"""Per-request ℓ2 settings as they travel to an engine, and per-token records as they come back.

A request to an engine carries its settings as one JSON string under
:data:`SETTINGS_KEY` in the engine's per-request parameters (SGLang:
``sampling_params["custom_params"]``), because engines pass only flat
scalars through. Each generated token comes back with one record under
:data:`TOKEN_KEY` (SGLang: ``meta_info["l2r"]``, one entry per completion
token)::

    {"n": [norm per requested layer], "sc": self-certainty | absent,
     "r": {controller reports} | absent, "e": "error" | absent}

``n`` is the ℓ2 norm of the residual stream after each requested decoder layer
at the position that produced the token (the convention of
:mod:`l2reason.backends.base`); ``r`` is the cumulative report of the
request's interventions after that token (the last record holds the totals);
``e`` says why the plugin ignored the settings.

Example:
    >>> s = EngineSettings(layers=[18, 19], interventions=[{"kind": "alrr"}], seed=7)
    >>> EngineSettings.decode(s.encode()) == s
    True
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from l2reason.errors import ConfigError

__all__ = ["MAX_LAYERS", "SETTINGS_KEY", "TOKEN_KEY", "EngineSettings"]

#: the key of the settings JSON in the engine's per-request parameters
SETTINGS_KEY = "l2reason"
#: the key of the per-token records in the engine's per-token output
TOKEN_KEY = "l2r"
#: no model we know has more decoder layers than this; a sanity bound on the wire
MAX_LAYERS = 1024


class EngineSettings(BaseModel):
    """What one request asks of the engine plugin.

    Args:
        layers: absolute decoder-layer indices (0-based) whose per-token norms
            come back, in this order; empty = no norms.
        interventions: intervention specs (dicts with a ``kind``; see
            :func:`~l2reason.techniques.specs.parse_interventions`), run at
            decode steps in this order.
        seed: the request's seed for the controllers' counter-based RNG.
        sc: also return each token's self-certainty (``"sc"``), computed from
            the engine's full next-token logits (temperature 1).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    v: int = 1
    layers: list[int] = Field(default_factory=list)
    interventions: list[dict[str, Any]] = Field(default_factory=list)
    seed: int = Field(0, ge=0, lt=2**63)
    sc: bool = False

    @field_validator("v")
    @classmethod
    def _v(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"settings version {v} is not supported by this l2reason (expects 1): upgrade the plugin")
        return v

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int]) -> list[int]:
        if any(i < 0 or i >= MAX_LAYERS for i in v):
            raise ValueError(f"layers must be absolute indices in [0, {MAX_LAYERS}) (got {v})")
        if len(set(v)) != len(v):
            raise ValueError(f"layers must not repeat (got {v})")
        return v

    @field_validator("interventions")
    @classmethod
    def _interventions(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from l2reason.techniques.specs import parse_interventions

        return [s.model_dump(mode="json") for s in parse_interventions(list(v))]

    def specs(self) -> list[Any]:
        """The interventions as parsed spec objects."""
        from l2reason.techniques.specs import parse_interventions

        return parse_interventions(list(self.interventions))

    def group_key(self) -> str:
        """Requests with the same key share controller objects (their state rows differ)."""
        return json.dumps(self.interventions, sort_keys=True)

    def encode(self) -> dict[str, str]:
        """The entry to merge into the engine's per-request parameters."""
        return {SETTINGS_KEY: self.model_dump_json()}

    @classmethod
    def decode(cls, params: dict[str, Any] | None) -> EngineSettings | None:
        """The settings in an engine's per-request parameters (None when the request has none).

        Raises:
            ConfigError: the entry is there but is not valid settings.
        """
        if not params or SETTINGS_KEY not in params:
            return None
        raw = params[SETTINGS_KEY]
        try:
            data = json.loads(raw) if isinstance(raw, str) else raw
            return cls.model_validate(data)
        except (ValueError, TypeError, ValidationError, ConfigError) as e:
            raise ConfigError(f"invalid l2reason settings in the request: {e}") from e
