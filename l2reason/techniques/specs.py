"""Configs of the five interventions: ALRR, ERSS, static steering, suppression (the causal check), SAE ablation.

Every spec is a frozen pydantic model that forbids unknown fields; a bad value
fails with a message that names the field, the allowed range, the value given
and, where useful, what to use instead. Defaults are the paper's evaluation
setting (Zhang et al., "The Tell-Tale Norm", arXiv 2606.06188); ``docs/techniques.md``
says, for every default, whether it is the paper's or l2reason's.

Layer lists are plain ints (negative = counted from the end, Python style) or
``"band"`` (the last quarter minus the final layer). Resolving them against a
concrete model is the backend's job; here we only reject malformed lists.

Example:
    >>> from l2reason.techniques.specs import parse_interventions
    >>> [spec] = parse_interventions([{"kind": "alrr", "K": 2}])
    >>> spec.K, spec.g, spec.b
    (2, 0.2, 1.5)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from l2reason.errors import ConfigError, validation_summary
from l2reason.limits import MAX_ABS_VALUE, MAX_ALRR_K, MAX_BANK, MAX_SAE_FEATURES, MAX_STEPS

__all__ = [
    "ALRRSpec",
    "ERSSSpec",
    "InterventionSpec",
    "SAEAblateSpec",
    "LayerSel",
    "StaticSteerSpec",
    "SuppressSpec",
    "ThresholdSpec",
    "check_vectors",
    "parse_interventions",
]

#: A layer selection: explicit indices (negatives count from the end) or the band.
LayerSel = list[StrictInt] | Literal["band"]


def _check_real(
    name: str,
    value: float,
    *,
    lo: float = -math.inf,
    hi: float = math.inf,
    lo_open: bool = False,
    hi_open: bool = False,
    hint: str = "",
) -> float:
    """Check ``value`` is finite and in the interval; raise with a fix-it message."""
    ok = math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo)
    ok = ok and (value < hi if hi_open else value <= hi)
    if ok:
        return value
    if lo > -math.inf and hi < math.inf:
        lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
        where = f"in {lb}{lo:g}, {hi:g}{rb}"
    elif lo > -math.inf:
        where = f"{'>' if lo_open else '>='} {lo:g}"
    elif hi < math.inf:
        where = f"{'<' if hi_open else '<='} {hi:g}"
    else:
        where = "a finite number"
    msg = f"{name} must be {where} (got {value!r})"
    raise ValueError(msg + (f"; {hint}" if hint else ""))


def _check_int(name: str, value: int, *, lo: int, hi: int | None = None, hint: str = "") -> int:
    if value < lo or (hi is not None and value > hi):
        where = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        msg = f"{name} must be an integer {where} (got {value})"
        raise ValueError(msg + (f"; {hint}" if hint else ""))
    return value


def _check_layers(value: list[int] | str) -> list[int] | str:
    if isinstance(value, list):
        if not value:
            raise ValueError('layers must not be empty: list layer indices (e.g. [18, 19]) or use "band"')
        if len(set(value)) != len(value):
            raise ValueError(f"layers must not repeat an index (got {value})")
    return value


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ThresholdSpec(_Spec):
    """How τ_l is obtained.

    Args:
        mode: ``"adaptive"`` (online Q3 + k·max(IQR, min_iqr) per request, P²
            quantiles) or ``"calibrated"`` (the q-quantile stored in a
            calibration file for the model).
        warmup: W, decode steps before any intervention (τ = +inf until then).
        k: IQR multiplier of the adaptive rule (Tukey's fence).
        min_iqr: floor on the IQR, so a flat norm trace still gives τ > Q3.

    Example:
        >>> ThresholdSpec(warmup=64).k
        1.5
    """

    mode: Literal["adaptive", "calibrated"] = "adaptive"
    warmup: StrictInt = 32  # l2reason: 32 (the paper's reference code: 200-500 on long traces)
    k: float = 1.5  # paper: τ = Q3 + 1.5·max(IQR, 1e-3) (Tukey fence)
    min_iqr: float = 1e-3  # paper: IQR floor 1e-3

    @field_validator("warmup")
    @classmethod
    def _warmup(cls, v: int) -> int:
        return _check_int("warmup", v, lo=0, hi=MAX_STEPS, hint="use 0 to intervene from the first step")

    @field_validator("k")
    @classmethod
    def _k(cls, v: float) -> float:
        return _check_real("k", v, lo=0.0, hi=1e6)

    @field_validator("min_iqr")
    @classmethod
    def _min_iqr(cls, v: float) -> float:
        return _check_real("min_iqr", v, lo=0.0, hi=MAX_ABS_VALUE)


class ALRRSpec(_Spec):
    """Adaptive Layer-wise Reasoning Recursion (``docs/techniques.md``, "ALRR").

    Args:
        layers: the recursion set (default: the layer band).
        K: at most K extra passes per layer and token (``mode="static"``: exactly
            K forced passes). 0 disables recursion.
        g: minimum relative norm growth (‖x̃‖ − ‖xᵏ‖)/‖xᵏ‖ for a pass to be kept.
        b: upper band factor: a token is active while τ < n < b·τ.
        mode: ``"adaptive"`` (the paper's rule) or ``"static"`` (always re-run:
            the "duplicate a block" baseline).
        threshold: how τ is obtained.

    Example:
        >>> ALRRSpec(layers=[10, 11], mode="static").K
        1
    """

    kind: Literal["alrr"] = "alrr"
    layers: LayerSel = "band"
    K: StrictInt = 1  # paper's evaluation setting: K = 1
    g: float = 0.2  # paper: g = 0.2
    b: float = 1.5  # paper: b = 1.5
    mode: Literal["adaptive", "static"] = "adaptive"
    threshold: ThresholdSpec = ThresholdSpec()

    _layers = field_validator("layers")(_check_layers)

    @field_validator("K")
    @classmethod
    def _K(cls, v: int) -> int:
        return _check_int(
            "K", v, lo=0, hi=MAX_ALRR_K, hint="K is the number of extra passes per layer and token; 0 disables"
        )

    @field_validator("g")
    @classmethod
    def _g(cls, v: float) -> float:
        return _check_real("g", v, lo=0.0, hi=1e6)

    @field_validator("b")
    @classmethod
    def _b(cls, v: float) -> float:
        return _check_real(
            "b",
            v,
            lo=1.0,
            lo_open=True,
            hi=1e6,
            hint="b·τ is the upper edge of the band τ < n < b·τ",
        )


class ERSSSpec(_Spec):
    """Endogenous Reasoning State Steering (``docs/techniques.md``, "ERSS").

    Args:
        layers: the steered layers (default: the layer band).
        M: memory-bank size (top-M states by norm above τ).
        gamma: a step is "low" when n < γ·τ.
        S: streak of consecutive low steps needed to fire.
        p: probability of firing once the streak and cooldown allow it.
        C: cooldown, in steps, after a fire.
        c_min: minimum cosine between x and the chosen bank state to inject.
        beta: injection strength β.
        injection: ``"exact"`` (x + β·(v* − r), r = the MLP-input residual),
            ``"interpolate"`` ((1−β)·x + β·v*), or ``"auto"`` (exact where the
            backend can see the MLP-input residual, else interpolate).
        threshold: how τ is obtained.

    Example:
        >>> ERSSSpec(beta=0.3).M
        32
    """

    kind: Literal["erss"] = "erss"
    layers: LayerSel = "band"
    M: StrictInt = 32  # paper: bank of M = 32 states
    gamma: float = 1.0  # paper: γ = 1
    S: StrictInt = 40  # paper: streak S = 40
    p: float = 0.2  # paper: Bernoulli p = 0.2
    C: StrictInt = 32  # paper: cooldown C = 32 steps
    c_min: float = 0.5  # paper: c_min = 0.5
    beta: float = 0.5  # paper: β = 0.5
    injection: Literal["exact", "interpolate", "auto"] = "auto"
    threshold: ThresholdSpec = ThresholdSpec()

    _layers = field_validator("layers")(_check_layers)

    @field_validator("M")
    @classmethod
    def _M(cls, v: int) -> int:
        return _check_int("M", v, lo=1, hi=MAX_BANK, hint="the bank needs at least one slot")

    @field_validator("S")
    @classmethod
    def _S(cls, v: int) -> int:
        return _check_int("S", v, lo=1, hi=MAX_STEPS)

    @field_validator("C")
    @classmethod
    def _C(cls, v: int) -> int:
        return _check_int("C", v, lo=0, hi=MAX_STEPS, hint="use 0 for no cooldown")

    @field_validator("gamma")
    @classmethod
    def _gamma(cls, v: float) -> float:
        return _check_real("gamma", v, lo=0.0, lo_open=True, hi=1e6)

    @field_validator("p")
    @classmethod
    def _p(cls, v: float) -> float:
        return _check_real("p", v, lo=0.0, hi=1.0, hint="p is a probability")

    @field_validator("c_min")
    @classmethod
    def _c_min(cls, v: float) -> float:
        return _check_real("c_min", v, lo=-1.0, hi=1.0, hint="c_min is a cosine")

    @field_validator("beta")
    @classmethod
    def _beta(cls, v: float) -> float:
        return _check_real("beta", v, lo=0.0, hi=1.0)


class StaticSteerSpec(_Spec):
    """Classic static steering: x' = x + α·v at fixed layers.

    Args:
        vectors: layer index -> steering vector (length = the model's hidden
            size; checked by :func:`check_vectors` once the model is known).
        alpha: scale α.
        norm_preserving: rescale x' to ‖x‖ after adding.

    Example:
        >>> StaticSteerSpec(vectors={3: [0.0, 1.0]}, alpha=2.0).alpha
        2.0
    """

    kind: Literal["static_steer"] = "static_steer"
    vectors: dict[int, list[float]]  # JSON keys ("3") are accepted
    alpha: float = 1.0
    norm_preserving: bool = False

    @field_validator("vectors")
    @classmethod
    def _vectors(cls, v: dict[int, list[float]]) -> dict[int, list[float]]:
        if not v:
            raise ValueError("vectors must name at least one layer: {layer: [floats...]}")
        for layer, vec in v.items():
            if not vec:
                raise ValueError(f"vector for layer {layer} is empty")
            bad = [i for i, x in enumerate(vec) if not math.isfinite(x)]
            if bad:
                raise ValueError(
                    f"vector for layer {layer} holds {len(bad)} NaN/inf value(s) "
                    f"(first at index {bad[0]}); steering vectors must be finite"
                )
            big = [i for i, x in enumerate(vec) if abs(x) > MAX_ABS_VALUE]
            if big:
                raise ValueError(
                    f"vector for layer {layer} has {len(big)} value(s) beyond ±{MAX_ABS_VALUE:g} "
                    f"(first at index {big[0]}: {vec[big[0]]!r}); scale it down and use alpha"
                )
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        return _check_real("alpha", v, lo=-MAX_ABS_VALUE, hi=MAX_ABS_VALUE)


class SuppressSpec(_Spec):
    """The paper's causal check: damp high-norm tokens vs random tokens.

    Args:
        layers: where to suppress (default: the layer band).
        target: ``"high_norm"`` (rows with n > τ) or ``"random"`` (rows drawn
            at ``rate``, independent of the norm: the control).
        action: ``"scale"`` (x·scale) or ``"clamp"`` (x·min(1, (τ/4)/n)).
        scale: factor of the ``"scale"`` action.
        rate: probability per token and layer of the random control.
        threshold: how τ is obtained.

    Example:
        >>> SuppressSpec(target="random").rate
        0.05
    """

    kind: Literal["suppress"] = "suppress"
    layers: LayerSel = "band"
    target: Literal["high_norm", "random"] = "high_norm"
    action: Literal["scale", "clamp"] = "scale"
    scale: float = 0.1  # paper: scale high-norm tokens by 0.1
    rate: float = 0.05  # paper: random control at a 5% rate
    threshold: ThresholdSpec = ThresholdSpec()

    _layers = field_validator("layers")(_check_layers)

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: float) -> float:
        return _check_real("scale", v, lo=-1e6, hi=1e6)

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: float) -> float:
        return _check_real("rate", v, lo=0.0, hi=1.0, hint="rate is a probability")


class SAEAblateSpec(_Spec):
    """Remove SAE features from the residual stream at one layer, at every position of the request.

    ``x ← x − Σ_{i∈S} f_i(x)·d_i`` after decoder layer ``layer``, for the prompt
    and every generated token (so the prompt's cached keys/values are those of
    the ablated stream too); the SAE's error term is kept. Runs in the engine
    plugins (SGLang, vLLM); with the embedded backend use
    :func:`l2reason.sae.ablate.ablate_features`.

    Args:
        sae: the *name* of an SAE file written by ``l2reason sae export``
            (:meth:`~l2reason.techniques.sae_ablate.SAEWeights.save`) in the
            folder the server was started with (``--sae-dir``): a relative
            name, no ``..`` (:func:`~l2reason.techniques.sae_ablate.check_sae_name`).
            A server reads no other file.
        layer: the decoder layer (absolute index, 0-based).
        features: the SAE feature indices to remove (at least one, no repeats).

    Example:
        >>> SAEAblateSpec(sae="sae.safetensors", layer=20, features=[3, 7]).features
        [3, 7]
    """

    kind: Literal["sae_ablate"] = "sae_ablate"
    sae: str = Field(min_length=1)
    layer: StrictInt = Field(ge=0)
    features: list[StrictInt] = Field(min_length=1, max_length=MAX_SAE_FEATURES)

    @field_validator("sae")
    @classmethod
    def _sae(cls, v: str) -> str:
        from l2reason.techniques.sae_ablate import check_sae_name

        return check_sae_name(v)

    @field_validator("features")
    @classmethod
    def _features(cls, v: list[int]) -> list[int]:
        if any(i < 0 for i in v):
            raise ValueError(f"feature indices must be >= 0 (got {v})")
        if len(set(v)) != len(v):
            raise ValueError(f"features must not repeat (got {v})")
        return v


#: the spec classes themselves (type hints, ``isinstance``)
AnySpec = ALRRSpec | ERSSSpec | StaticSteerSpec | SuppressSpec | SAEAblateSpec

#: Any intervention spec; pydantic picks the class from the ``kind`` field.
InterventionSpec = Annotated[AnySpec, Field(discriminator="kind")]

_ADAPTER: TypeAdapter[Any] = TypeAdapter(InterventionSpec)
_KINDS = ("alrr", "erss", "static_steer", "suppress", "sae_ablate")


def parse_interventions(
    items: Sequence[Mapping[str, Any] | AnySpec],
) -> list[AnySpec]:
    """Validate a list of intervention configs (dicts or specs) into specs.

    Args:
        items: dicts with a ``kind`` key (one of ``alrr``, ``erss``,
            ``static_steer``, ``suppress``, ``sae_ablate``) or already-built specs.

    Returns:
        The specs, in order.

    Raises:
        ConfigError: an item is invalid; the message names its position and
            the fix.

    Example:
        >>> parse_interventions([{"kind": "erss", "beta": 0.25}])[0].beta
        0.25
    """
    out: list[AnySpec] = []
    for i, item in enumerate(items):
        if isinstance(item, AnySpec):
            out.append(item)
            continue
        if not isinstance(item, Mapping):
            raise ConfigError(f"intervention #{i} must be a dict or a spec (got {type(item).__name__})")
        kind = item.get("kind")
        if kind not in _KINDS:
            raise ConfigError(f"intervention #{i}: unknown kind {kind!r}; valid kinds: {', '.join(_KINDS)}")
        try:
            out.append(_ADAPTER.validate_python(dict(item)))
        except ValidationError as e:
            raise ConfigError(f"intervention #{i} ({kind}): {_brief(e)}") from e
    return out


def _brief(e: ValidationError) -> str:
    """One line per pydantic error: ``field: message`` (the union's tag left out)."""
    return validation_summary(
        e, loc_from=1, unknown_field="unknown field (check the spelling; see the spec's docstring for valid fields)"
    )


def check_vectors(spec: StaticSteerSpec, hidden_size: int, num_layers: int) -> None:
    """Check a static-steering spec against a model's shape.

    Args:
        spec: the spec.
        hidden_size: d, the model's hidden size.
        num_layers: L, the number of decoder layers (layer keys may be negative,
            counted from the end).

    Raises:
        ConfigError: a vector has the wrong length, or a layer is outside the model.

    Example:
        >>> check_vectors(StaticSteerSpec(vectors={-1: [0.0] * 4}), hidden_size=4, num_layers=2)
    """
    for layer, vec in spec.vectors.items():
        if not -num_layers <= layer < num_layers:
            raise ConfigError(
                f"steering layer {layer} is outside the model: valid layers are "
                f"0..{num_layers - 1} (or -{num_layers}..-1)"
            )
        if len(vec) != hidden_size:
            raise ConfigError(
                f"vector for layer {layer} has {len(vec)} values; the model's hidden size is {hidden_size}"
            )
