"""Per-request ℓ2 settings as they travel to an engine, and per-token records as they come back.

A request to an engine carries its settings as one JSON string under
:data:`SETTINGS_KEY` in the engine's per-request parameters (SGLang:
``sampling_params["custom_params"]``), because engines pass only flat
scalars through. Each generated token comes back with one record under
:data:`TOKEN_KEY` (SGLang: ``meta_info["l2r"]``, one entry per completion
token)::

    {"n": [norm per requested layer], "sc": self-certainty | absent,
     "cf": DeepConf confidence | absent, "p": tokens kept | absent,
     "r": {controller reports} | absent, "e": "error" | absent,
     "caps": {"interventions": [kinds], "features": [names], "plugin": version} | absent}

``n`` is the ℓ2 norm of the residual stream after each requested decoder layer
at the position that produced the token (the convention of
:mod:`l2reason.backends.base`); ``r`` is the cumulative report of the
request's interventions after that token (the last record holds the totals);
``e`` says why the plugin ignored the settings; ``caps`` (the prefill's
record of a request with ``probe``, so the first record) says what the
plugin can do (:mod:`l2reason.serving.capabilities`). ``cf`` (requests whose
``prune`` scores ``confidence``) is ``-mean`` of the token's top-``k``
logprobs at temperature 1; ``p`` (online pruning, :mod:`l2reason.serving.prune`)
marks the record of the last token a pruned candidate keeps: the engine
stopped it there (it may have generated a token or two more, which the
client drops).

The interventions are typed specs (:data:`~l2reason.techniques.specs.AnySpec`),
parsed once when the settings are built or decoded and written with
``model_dump`` when encoded. :meth:`EngineSettings.decode` is what a server
runs on what anyone sent it, so it bounds everything that sizes memory or
time before the work (:mod:`l2reason.limits`): the JSON string's length
(before parsing it), the number of interventions (before parsing them), layer
lists, steering-vector sizes, SAE feature lists and names; any failure,
nesting too deep for the parser included, is a :class:`~l2reason.errors.ConfigError`.

Example:
    >>> s = EngineSettings(layers=[18, 19], interventions=[{"kind": "alrr"}], seed=7)
    >>> EngineSettings.decode(s.encode()) == s
    True
    >>> s.interventions[0].K
    1
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from l2reason.errors import ConfigError, validation_summary
from l2reason.limits import (
    MAX_ABS_VALUE,
    MAX_HIDDEN,
    MAX_INTERVENTIONS,
    MAX_LAYERS,
    MAX_LOGPROBS,
    MAX_N,
    MAX_NEW_TOKENS,
    MAX_SETTINGS_CHARS,
    MAX_STEPS,
)
from l2reason.techniques.specs import InterventionSpec, StaticSteerSpec, parse_interventions

__all__ = ["MAX_LAYERS", "SETTINGS_KEY", "TOKEN_KEY", "EngineSettings", "PruneSettings"]

#: the key of the settings JSON in the engine's per-request parameters
SETTINGS_KEY = "l2reason"
#: the key of the per-token records in the engine's per-token output
TOKEN_KEY = "l2r"


class PruneSettings(BaseModel):
    """Online pruning of one candidate, as the engine plugin needs it (:mod:`l2reason.serving.prune`).

    The rule's fields are :class:`~l2reason.backends.base.PruneSpec`'s, resolved by the client: ``cols`` are
    the columns of the record's ``"n"`` that the ``"l2"`` signal averages (the prune layers among the
    settings' ``layers``) and ``tau`` is numeric. The candidates of one request share ``group`` (a random id
    the client draws per request) and ``n``; ``index`` is this candidate's row.

    Args:
        group: the request's group id (1 to 64 characters).
        n: candidates in the group (2 to ``MAX_N``).
        index: this candidate's row, ``0 <= index < n``.
        max_len: the most tokens a candidate generates (the request's ``max_new_tokens``).
        k: top-k logprobs of the ``"confidence"`` signal (``-mean`` of the top ``k``; 0 for other scores).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    group: str = Field(min_length=1, max_length=64)
    n: int = Field(ge=2, le=MAX_N)
    index: int = Field(ge=0, lt=MAX_N)
    max_len: int = Field(ge=1, le=MAX_NEW_TOKENS)
    score: Literal["confidence", "self-certainty", "l2"]
    threshold: float | Literal["first-finished"]
    first: int = Field(2, ge=1, le=MAX_N)
    quantile: float = Field(0.1, ge=0.0, le=1.0, allow_inf_nan=False)
    warmup: int = Field(64, ge=0, le=MAX_STEPS)
    window: int = Field(2048, ge=1, le=MAX_STEPS)
    min_keep: int = Field(1, ge=1, le=MAX_N)
    k: int = Field(0, ge=0, le=MAX_LOGPROBS)
    cols: list[int] = Field(default_factory=list, max_length=MAX_LAYERS)
    l2_stat: Literal["mean", "exceedance"] = "mean"
    tau: list[float] | None = Field(None, max_length=MAX_LAYERS)
    direction: Literal["high", "low"] = "high"

    @model_validator(mode="after")
    def _check(self) -> PruneSettings:
        if self.index >= self.n or self.min_keep >= self.n:
            raise ValueError(f"prune: need index < n and min_keep < n (got {self.index}, {self.min_keep}, n={self.n})")
        if isinstance(self.threshold, float) and not abs(self.threshold) <= MAX_ABS_VALUE:
            raise ValueError(f"prune: threshold must be finite and within ±{MAX_ABS_VALUE:g}")
        if self.score == "confidence" and self.k < 1:
            raise ValueError("prune: score 'confidence' needs k >= 1 top logprobs")
        if self.score == "l2" and (not self.cols or any(c < 0 or c >= MAX_LAYERS for c in self.cols)):
            raise ValueError("prune: score 'l2' needs cols, the columns of the record's norms it averages")
        if (
            self.score == "l2"
            and self.l2_stat == "exceedance"
            and (self.tau is None or len(self.tau) != len(self.cols))
        ):
            raise ValueError("prune: l2_stat 'exceedance' needs one tau per column")
        return self


class EngineSettings(BaseModel):
    """What one request asks of the engine plugin.

    Args:
        layers: absolute decoder-layer indices (0-based) whose per-token norms
            come back, in this order; empty = no norms.
        interventions: intervention specs (spec objects, or dicts with a
            ``kind``, parsed by :func:`~l2reason.techniques.specs.parse_interventions`),
            run in this order.
        seed: the request's seed for the controllers' counter-based RNG.
        sc: also return each token's self-certainty (``"sc"``), computed from
            the engine's full next-token logits (temperature 1).
        probe: the request's first per-token record also carries ``"caps"``:
            ``{"interventions": [sorted supported kinds], "plugin": version}``,
            what this server's plugin can do.
        prune: online pruning of this candidate among its request's (None: none).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    v: int = 1
    layers: list[int] = Field(default_factory=list)
    interventions: list[InterventionSpec] = Field(default_factory=list)
    seed: int = Field(0, ge=0, lt=2**63)
    sc: bool = False
    probe: bool = False
    prune: PruneSettings | None = None

    @field_validator("v")
    @classmethod
    def _v(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"settings version {v} is not supported by this l2reason (expects 1): upgrade the plugin")
        return v

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int]) -> list[int]:
        if len(v) > MAX_LAYERS or any(i < 0 or i >= MAX_LAYERS for i in v):
            raise ValueError(f"layers must be absolute indices in [0, {MAX_LAYERS}) (got {v[:8]}...)")
        if len(set(v)) != len(v):
            raise ValueError(f"layers must not repeat (got {v})")
        return v

    @field_validator("interventions", mode="before")
    @classmethod
    def _interventions(cls, v: Any) -> Any:
        if not isinstance(v, list | tuple):
            raise ValueError(f"interventions must be a list (got {type(v).__name__})")
        if len(v) > MAX_INTERVENTIONS:
            raise ValueError(f"at most {MAX_INTERVENTIONS} interventions per request (got {len(v)})")
        return parse_interventions(list(v))  # the messages name the item and the fix; specs pass through

    @model_validator(mode="after")
    def _sizes(self) -> EngineSettings:
        for i, spec in enumerate(self.interventions):
            lists = [("layers", getattr(spec, "layers", None))]
            if isinstance(spec, StaticSteerSpec):
                lists.append(("vectors", list(spec.vectors)))
                big = [layer for layer, vec in spec.vectors.items() if len(vec) > MAX_HIDDEN]
                if big:
                    raise ValueError(f"intervention #{i}: vectors longer than {MAX_HIDDEN} values (layers {big[:8]})")
            for name, seq in lists:
                if isinstance(seq, list) and len(seq) > MAX_LAYERS:
                    raise ValueError(f"intervention #{i}: {name} names more than {MAX_LAYERS} layers ({len(seq)})")
        return self

    def specs(self) -> list[Any]:
        """The interventions (already parsed spec objects)."""
        return list(self.interventions)

    def controller_specs(self) -> list[Any]:
        """The interventions that run as per-step controllers (all but ``sae_ablate``, which the plugin runs itself)."""
        return [s for s in self.interventions if s.kind != "sae_ablate"]

    @cached_property
    def _group_key(self) -> str:
        return json.dumps([s.model_dump(mode="json") for s in self.controller_specs()], sort_keys=True)

    def group_key(self) -> str:
        """Requests with the same key share controller objects (their state rows differ); deterministic.
        Computed once per settings object (the plugins ask at every step)."""
        return self._group_key

    def encode(self) -> dict[str, str]:
        """The entry to merge into the engine's per-request parameters."""
        return {SETTINGS_KEY: self.model_dump_json()}

    @classmethod
    def decode(cls, params: dict[str, Any] | None) -> EngineSettings | None:
        """The settings in an engine's per-request parameters (None when the request has none).

        Raises:
            ConfigError: the entry is there but is not a settings JSON string within the bounds.
        """
        if not params or SETTINGS_KEY not in params:
            return None
        raw = params[SETTINGS_KEY]
        if not isinstance(raw, str):
            raise ConfigError(
                f"invalid l2reason settings in the request: expected a JSON string (got {type(raw).__name__})"
            )
        if len(raw) > MAX_SETTINGS_CHARS:
            raise ConfigError(
                f"invalid l2reason settings in the request: {len(raw)} characters, more than {MAX_SETTINGS_CHARS}"
            )
        try:
            return cls.model_validate_json(raw)
        except ValidationError as e:  # one short line; no echo of the (possibly large) input
            msg = validation_summary(e, root="settings", unknown_field="unknown field (see EngineSettings)")
            raise ConfigError(f"invalid l2reason settings in the request: {msg}") from e
        except (ValueError, TypeError, ConfigError, RecursionError) as e:
            raise ConfigError(f"invalid l2reason settings in the request: {e}") from e
