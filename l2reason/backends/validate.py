"""Validate a request against a loaded model, before any model work.

Every backend calls :func:`validate_request` on every request before its first
forward pass. It re-runs pydantic validation on the request's field values
(so requests built with ``model_copy(update=...)`` or ``model_construct``,
which skip pydantic, are checked too) and then checks everything that needs
the model: layer indices (negatives resolved, repeats refused), the τ list
lengths, calibration files the request relies on, steering-vector sizes,
intervention kinds the backend supports, selection methods and their layers,
and the bounds in :mod:`l2reason.limits`. A failure is a
:class:`~l2reason.errors.ConfigError` (or one of its subclasses) whose message
says what is wrong and what is allowed.

:func:`check_context` is the second half, run once the prompt is tokenized:
prompt plus ``max_new_tokens`` must fit the model's context length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from l2reason.backends.base import Capabilities, GenerationRequest, NormSpec, SelectionSpec, brief
from l2reason.errors import CalibrationError, CapabilityError, ConfigError, L2ReasonError, LayerError
from l2reason.limits import MAX_ABS_VALUE, MAX_BATCH_ROWS
from l2reason.signal.band import resolve_layers

__all__ = [
    "ModelLimits",
    "brief",
    "check_context",
    "distinct_layers",
    "revalidate",
    "validate_request",
    "validate_requests",
]


@dataclass(frozen=True)
class ModelLimits:
    """What a request is checked against.

    Args:
        num_layers: decoder layers.
        hidden_size: residual-stream width.
        context_length: the model's maximum positions (None = unknown: not checked).
        vocab_size: vocabulary size (None = unknown: ``top_k`` not checked against it).
        capabilities: the backend's capabilities (intervention kinds, logprobs).
        calibration: the backend's calibration (None = none loaded); a callable
            is called only when a request needs it (loading is lazy).
        dtype_max: the largest finite value of the model's float dtype.
    """

    num_layers: int
    hidden_size: int
    context_length: int | None
    vocab_size: int | None
    capabilities: Capabilities
    calibration: Any = None
    dtype_max: float = 3.4028234663852886e38


def _plain(x: Any) -> Any:
    """A model's field values as plain Python, recursively (so pydantic validates them again)."""
    if isinstance(x, BaseModel):
        return {k: _plain(getattr(x, k)) for k in type(x).model_fields if hasattr(x, k)}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def revalidate(request: Any) -> GenerationRequest:
    """The request validated again from its field values.

    Raises:
        ConfigError: not a :class:`GenerationRequest`, or a field is invalid
            (the message lists each bad field).
    """
    if not isinstance(request, GenerationRequest):
        raise ConfigError(f"expected a GenerationRequest, got {type(request).__name__}")
    try:
        return GenerationRequest.model_validate(_plain(request))
    except ValidationError as e:
        raise ConfigError(f"invalid generation request: {brief(e)}") from e
    except (TypeError, ValueError, AttributeError) as e:  # a model_construct'ed field pydantic cannot even read
        raise ConfigError(f"invalid generation request: {e}") from e


def distinct_layers(spec: Any, num_layers: int, what: str) -> list[int]:
    """Resolve a layer spec (:func:`~l2reason.signal.band.resolve_layers`), refusing repeats such as ``[1, 1]``
    or ``[-1, L-1]`` instead of dropping them.

    Args:
        spec: ``"band"``, ``"all"`` or layer indices (negatives count from the end).
        num_layers: the model's decoder layers.
        what: how messages name the list (``"norms.layers"``, ``"--layers"``).

    Returns:
        The sorted layer indices.

    Raises:
        LayerError: a layer outside the model, an empty or malformed list, or a layer named twice.

    Example:
        >>> distinct_layers([-1, 3], 4, "--layers")
        Traceback (most recent call last):
        ...
        l2reason.errors.LayerError: --layers names a layer twice (after resolving negatives): [-1, 3]
    """
    resolved = resolve_layers(spec, num_layers)
    if isinstance(spec, list | tuple):
        given = [int(x) % num_layers for x in spec]
        if len(set(given)) != len(given):
            raise LayerError(f"{what} names a layer twice (after resolving negatives): {list(spec)}")
    return resolved


def _layers(spec: Any, limits: ModelLimits, what: str) -> list[int]:
    """:func:`distinct_layers` against the model of ``limits``."""
    return distinct_layers(spec, limits.num_layers, what)


def _calibration(limits: ModelLimits, what: str, alternative: str) -> Any:
    cal = limits.calibration() if callable(limits.calibration) else limits.calibration
    if cal is None:
        raise ConfigError(
            f"{what} needs a calibration file for this model: run `l2reason calibrate` first, or {alternative}"
        )
    return cal


def _calibrated_layers(cal: Any, layers: Sequence[int], what: str) -> None:
    missing = [layer for layer in layers if layer not in set(cal.layers)]
    if missing:
        raise CalibrationError(
            f"{what}: layers {missing} are not in the calibration file (it has {cal.layers}); "
            "calibrate those layers or choose calibrated ones"
        )


def _check_norms(spec: NormSpec, limits: ModelLimits) -> list[int]:
    layers = _layers(spec.layers, limits, "norms.layers")
    if isinstance(spec.tau, list) and len(spec.tau) != len(layers):
        raise ConfigError(
            f"norms.tau has {len(spec.tau)} values but norms.layers resolves to {len(layers)} layers {layers}; "
            "give one threshold per layer (in ascending layer order) or tau='calibrated'"
        )
    if spec.tau == "calibrated":
        cal = _calibration(limits, "norms.tau='calibrated'", "pass explicit tau values")
        _calibrated_layers(cal, layers, "norms.tau='calibrated'")
    return layers


def _check_selection(spec: SelectionSpec, request: GenerationRequest, captured: list[int], limits: ModelLimits) -> None:
    from l2reason.techniques.baselines import selector_params
    from l2reason.techniques.selection import L2_METHODS, LOGPROB_METHODS

    allowed = selector_params(spec.method)
    unknown = sorted(set(spec.params) - set(allowed) - {"score"})
    if unknown:
        raise ConfigError(
            f"selection {spec.method!r} has no parameter(s) {unknown}; it takes: {', '.join(allowed) or 'none'}"
        )
    if spec.method in LOGPROB_METHODS and not request.logprobs:
        raise ConfigError(f"selection {spec.method!r} needs logprobs: set GenerationRequest(logprobs=k) with k >= 1")
    if spec.method not in L2_METHODS:
        return
    if request.norms is None:
        raise ConfigError(
            f"selection {spec.method!r} scores ℓ2 norms: the request must capture them (norms=NormSpec())"
        )
    layers = _layers(spec.layers, limits, "selection.layers")
    missing = [layer for layer in layers if layer not in captured]
    if missing:
        raise LayerError(
            f"selection.layers {missing} are not captured; the request captures {captured} "
            "(widen norms.layers or narrow selection.layers)"
        )
    if isinstance(spec.tau, list) and len(spec.tau) != len(layers):
        raise ConfigError(f"selection.tau has {len(spec.tau)} values for {len(layers)} selection layers {layers}")
    if spec.tau == "calibrated":
        cal = _calibration(limits, "selection tau='calibrated'", "use tau='pooled'")
        _calibrated_layers(cal, layers, "selection tau='calibrated'")


def _check_repeats(specs: Sequence[Any]) -> None:
    """Each intervention kind at most once per request (its report is keyed by kind); an SAE ablation at most
    once per layer (ablations at different layers are applied one after the other)."""
    seen: dict[Any, int] = {}
    for i, spec in enumerate(specs):
        key = (spec.kind, spec.layer) if spec.kind == "sae_ablate" else spec.kind
        if key in seen:
            if spec.kind == "sae_ablate":
                raise ConfigError(
                    f"intervention #{i} (sae_ablate) ablates layer {spec.layer} again (#{seen[key]} does): "
                    "put all the features of one layer in one sae_ablate spec"
                )
            raise ConfigError(
                f"intervention #{i}: {spec.kind!r} is asked for more than once (#{seen[key]} and #{i}); each kind "
                "runs once per request and reports once: merge them into one spec (one list of layers, one dict "
                "of steering vectors)"
            )
        seen[key] = i


def _check_interventions(request: GenerationRequest, limits: ModelLimits) -> None:
    from l2reason.techniques.specs import SAEAblateSpec, StaticSteerSpec, check_vectors

    caps = limits.capabilities
    kinds = caps.interventions
    _check_repeats(request.interventions)
    for i, spec in enumerate(request.interventions):
        kind = spec.kind
        if kind not in kinds:
            hint = (
                " (in-process, wrap the call in `with l2reason.sae.ablate.ablate_features(backend, sae, layer, "
                "features):` instead)"
                if kind == "sae_ablate"
                else ""
            )
            raise CapabilityError(
                f"intervention #{i}: backend {limits.capabilities.name!r} cannot run {kind!r}; "
                f"it supports: {', '.join(sorted(kinds)) or 'none'}{hint}"
            )
        if isinstance(spec, SAEAblateSpec):
            if spec.layer >= limits.num_layers:
                raise LayerError(
                    f"intervention #{i} (sae_ablate): layer {spec.layer} does not exist "
                    f"(the model has {limits.num_layers} layers, 0..{limits.num_layers - 1})"
                )
            continue
        if isinstance(spec, StaticSteerSpec):
            check_vectors(spec, limits.hidden_size, limits.num_layers)
            keys = [int(k) % limits.num_layers for k in spec.vectors]
            if len(set(keys)) != len(keys):
                raise LayerError(
                    f"intervention #{i} (static_steer): two vectors for the same layer {list(spec.vectors)}"
                )
            worst = max(max(abs(x) for x in v) for v in spec.vectors.values()) * abs(spec.alpha)
            if not math.isfinite(worst) or worst > min(MAX_ABS_VALUE, limits.dtype_max / 16):
                raise ConfigError(
                    f"intervention #{i} (static_steer): alpha x vector reaches {worst:.3g}, which overflows the "
                    f"model's dtype (max {limits.dtype_max:.3g}); scale the vector or alpha down"
                )
            continue
        _layers(spec.layers, limits, f"intervention #{i} ({kind}) layers")
        th = getattr(spec, "threshold", None)
        if th is not None and th.mode == "calibrated" and not caps.calibrated_thresholds:
            raise CapabilityError(
                f"intervention #{i} ({kind}): calibrated thresholds are not available on backend {caps.name!r}; "
                "use threshold mode 'adaptive' (the default)"
            )
        if th is not None and th.mode == "calibrated":
            cal = _calibration(limits, f"intervention #{i} ({kind}) threshold mode 'calibrated'", "use mode='adaptive'")
            _calibrated_layers(cal, resolve_layers(spec.layers, limits.num_layers), f"intervention #{i} ({kind})")


def validate_request(request: Any, limits: ModelLimits) -> GenerationRequest:
    """Everything about one request that can be checked before the model runs.

    Returns:
        The request, validated again (use it instead of the one given).

    Raises:
        ConfigError: (or ``LayerError``/``CalibrationError``/``CapabilityError``)
            with what is wrong and what is allowed.
    """
    req = revalidate(request)
    caps = limits.capabilities
    if req.sampling.top_k is not None and limits.vocab_size is not None and req.sampling.top_k > limits.vocab_size:
        raise ConfigError(f"top_k={req.sampling.top_k} exceeds the vocabulary ({limits.vocab_size} tokens)")
    if limits.context_length is not None and req.sampling.max_new_tokens >= limits.context_length:
        raise ConfigError(
            f"max_new_tokens={req.sampling.max_new_tokens} does not fit the model's context length "
            f"({limits.context_length} positions, prompt included)"
        )
    if req.logprobs and not caps.logprobs:
        raise CapabilityError(f"backend {caps.name!r} cannot return logprobs")
    captured: list[int] = []
    if req.norms is not None:
        if not caps.per_layer_norms:
            raise CapabilityError(f"backend {caps.name!r} does not report per-layer norms")
        captured = _check_norms(req.norms, limits)
    if req.selection is not None:
        _check_selection(req.selection, req, captured, limits)
    _check_interventions(req, limits)
    if req.prune is not None:
        _check_prune(req, limits)
    if req.collect is not None:
        _check_collect(req, limits)
    return req


def collect_bytes(request: GenerationRequest, n_layers: int, hidden_size: int) -> int:
    """Worst-case bytes of the hidden states ``request.collect`` asks for (every candidate at ``max_new_tokens``)."""
    spec = request.collect
    if spec is None:
        return 0
    per_value = 2 if spec.dtype == "float16" else 4
    steps = request.sampling.max_new_tokens if spec.positions == "decode" else 1
    return request.n * steps * n_layers * hidden_size * per_value


def _check_collect(request: GenerationRequest, limits: ModelLimits) -> None:
    from l2reason.limits import MAX_COLLECT_BYTES

    spec = request.collect
    assert spec is not None
    caps = limits.capabilities
    if not caps.hidden_states:
        raise CapabilityError(
            f"backend {caps.name!r} cannot return hidden states (collect=...); drop `collect` or use the hf backend"
        )
    layers = _layers(spec.layers, limits, "collect.layers")
    need = collect_bytes(request, len(layers), limits.hidden_size)
    if need > MAX_COLLECT_BYTES:
        raise ConfigError(
            f"collect would hold up to {need / 2**20:.0f} MiB of hidden states (n={request.n} x "
            f"{request.sampling.max_new_tokens if spec.positions == 'decode' else 1} positions x {len(layers)} layers "
            f"x {limits.hidden_size} x {spec.dtype}); at most {MAX_COLLECT_BYTES / 2**20:.0f} MiB per request: "
            "collect fewer layers, positions='mean' or 'last', dtype='float16', a smaller n or max_new_tokens"
        )


def _check_prune(request: GenerationRequest, limits: ModelLimits) -> None:
    spec = request.prune
    assert spec is not None
    caps = limits.capabilities
    if not caps.pruning:
        raise CapabilityError(
            f"backend {caps.name!r} cannot prune candidates online; drop `prune`, or use the hf backend or a vLLM "
            "server whose l2reason plugin names 'prune' in its capabilities (an older plugin does not: restart it "
            "with this l2reason's plugin)"
        )
    if spec.score != "l2":
        return
    layers = _layers(spec.layers, limits, "prune.layers")
    if isinstance(spec.tau, list) and len(spec.tau) != len(layers):
        raise ConfigError(f"prune.tau has {len(spec.tau)} values for {len(layers)} prune layers {layers}")
    if spec.tau == "calibrated":
        cal = _calibration(limits, "prune tau='calibrated'", "pass explicit tau values")
        _calibrated_layers(cal, layers, "prune tau='calibrated'")


def validate_requests(requests: Any, limits: ModelLimits) -> list[GenerationRequest]:
    """:func:`validate_request` on each request of a batch, plus the batch's own bound.

    Raises:
        ConfigError: naming the position of the first bad request.
    """
    if isinstance(requests, GenerationRequest | str | bytes) or not isinstance(requests, Sequence):
        raise ConfigError(f"expected a list of GenerationRequest, got {type(requests).__name__}")
    out = []
    for i, r in enumerate(requests):
        try:
            out.append(validate_request(r, limits))
        except L2ReasonError as e:
            if len(requests) == 1:
                raise
            raise type(e)(f"request #{i}: {e}") from e
    rows = sum(r.n for r in out)
    if rows > MAX_BATCH_ROWS:
        raise ConfigError(
            f"{len(out)} requests ask for {rows} candidates in one call; at most {MAX_BATCH_ROWS}: split the batch"
        )
    _check_collect_batch(out, limits)
    return out


def _check_collect_batch(requests: list[GenerationRequest], limits: ModelLimits) -> None:
    """The hidden states of one call together stay under the bound (each request alone was checked)."""
    from l2reason.limits import MAX_COLLECT_BYTES

    need = sum(
        collect_bytes(r, len(resolve_layers(r.collect.layers, limits.num_layers)), limits.hidden_size)
        for r in requests
        if r.collect is not None
    )
    if need > MAX_COLLECT_BYTES:
        raise ConfigError(
            f"{len(requests)} requests collect up to {need / 2**20:.0f} MiB of hidden states in one call; at most "
            f"{MAX_COLLECT_BYTES / 2**20:.0f} MiB: split the batch"
        )


def check_context(prompt_tokens: int, request: GenerationRequest, context_length: int | None) -> None:
    """Prompt plus ``max_new_tokens`` must fit the model's context (None = unknown: not checked).

    Raises:
        ConfigError: with the sizes and what to shorten.
    """
    if context_length is None:
        return
    need = prompt_tokens + request.sampling.max_new_tokens
    if need > context_length:
        raise ConfigError(
            f"prompt ({prompt_tokens} tokens) + max_new_tokens ({request.sampling.max_new_tokens}) = {need} "
            f"exceeds the model's context length ({context_length}); shorten the prompt or lower max_new_tokens "
            f"to at most {max(context_length - prompt_tokens, 0)}"
        )
