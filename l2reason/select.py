"""Selection over a finished :class:`GenerationResult`: one call to pick, or re-score later.

The backend calls :func:`apply_selection` when a request carries a
``SelectionSpec``; the evaluation harness calls :func:`select_result` on
stored results to compare every selector on the *same* samples.

Only survivors are selected from: candidates that online pruning stopped
(``finish_reason="pruned"``) or that stopped on a non-finite state
(``"nonfinite"``) take no part (no vote, no share of the pooled τ); their
scores are NaN (``None`` once applied) and ``details["survivors"]`` lists the
others. If no candidate survives, all of them are used.

Layering: this module sits with the backends (it reads the plain-data
``GenerationResult`` of :mod:`l2reason.backends.base`, and the HF backend
calls it), so it imports only the protocol, :mod:`l2reason.signal` and
:mod:`l2reason.techniques` (the default answer extractor included), never the
evaluation, DSPy or CLI code (``tests/unit/test_layering.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from l2reason.backends.base import GenerationResult, SelectionSpec
from l2reason.errors import ConfigError
from l2reason.signal.band import default_band
from l2reason.signal.threshold import iqr_threshold
from l2reason.techniques.answers import extract_answer
from l2reason.techniques.baselines import SELECTORS, select
from l2reason.techniques.probe import PROBE_METHODS, Probe
from l2reason.techniques.selection import L2_METHODS, LOGPROB_METHODS, CandidateSignals, Selection  # re-exported


def _columns(
    result: GenerationResult, layers: Sequence[int] | str, num_layers: int | None
) -> tuple[list[int], list[int]]:
    c0 = next((c for c in result.candidates if c.norms is not None), None)
    if c0 is None or c0.norms is None:
        return [], []
    captured = c0.norms.layers
    if layers == "band":
        want = default_band(num_layers) if num_layers else captured
        want = [layer for layer in want if layer in captured] or captured
    else:
        want = list(layers)  # type: ignore[arg-type]
        missing = [layer for layer in want if layer not in captured]
        if missing:
            raise ConfigError(f"selection layers {missing} were not captured; captured layers: {captured}")
    return want, [captured.index(layer) for layer in want]


def candidate_signals(
    result: GenerationResult,
    *,
    layers: Sequence[int] | str = "band",
    num_layers: int | None = None,
    extractor: Callable[[str], str | None] | None = None,
) -> tuple[list[CandidateSignals], list[int]]:
    """The selector inputs of every candidate, and the layers their ``band_norms`` columns hold.

    Masked (massive-activation) tokens become NaN rows, which the ℓ2 scores skip.
    """
    extract = extractor or extract_answer
    used, cols = _columns(result, layers, num_layers)
    out: list[CandidateSignals] = []
    for c in result.candidates:
        if c.norms is not None and c.norms.per_token is not None and cols:
            arr = c.norms.array()[:, cols].astype(np.float64)
            if c.norms.masked:
                arr[np.asarray(c.norms.masked, dtype=bool)] = np.nan
        else:
            arr = np.zeros((c.completion_tokens, 0))
        lp = c.logprobs
        out.append(
            CandidateSignals(
                text=c.text,
                answer=extract(c.text),
                n_tokens=c.completion_tokens,
                finished=c.finish_reason != "length",
                band_norms=arr,
                token_logprob=np.asarray(lp.logprob) if lp else None,
                token_self_certainty=np.asarray(lp.self_certainty) if lp else None,
                token_confidence=np.asarray(lp.confidence) if lp and lp.confidence is not None else None,
            )
        )
    return out, used


def pooled_tau(cands: Sequence[CandidateSignals]) -> np.ndarray:
    """τ_l = Q3 + 1.5·IQR of all candidates' norms pooled, per layer (no calibration needed)."""
    arrs = [c.band_norms for c in cands if c.band_norms.size]
    if not arrs:
        raise ConfigError("no ℓ2 norms to score: request norms (NormSpec) with the selection")
    pooled = torch.from_numpy(np.concatenate(arrs, axis=0).T.copy()).float()  # [n_layers, ΣT]
    valid = ~torch.isnan(pooled)
    return iqr_threshold(torch.nan_to_num(pooled), valid=valid).numpy()


def select_result(
    result: GenerationResult,
    spec: SelectionSpec | str,
    *,
    calibration: Any = None,
    num_layers: int | None = None,
    extractor: Callable[[str], str | None] | None = None,
    probe: Any = None,
) -> Selection:
    """Run one selector on a finished result (without generating again).

    Args:
        result: a result with ``n`` candidates (norms and, for the logprob
            baselines, logprobs).
        spec: a :class:`SelectionSpec` or just a method name.
        calibration: a ``Calibration`` for ``tau="calibrated"``, and whose
            ``probe`` the ``l2-probe`` methods use when ``probe`` is not given.
        num_layers: the model's depth (to resolve ``layers="band"``).
        extractor: final-answer extractor for the vote methods (default
            :func:`l2reason.techniques.answers.extract_answer`).
        probe: a fitted :class:`~l2reason.techniques.probe.Probe` (or its
            dict) for ``l2-probe`` / ``l2-probe-vote``; it reads the norms of
            its own layers (``probe.layers``), whatever ``spec.layers`` says.
    """
    if isinstance(spec, str):
        try:
            spec = SelectionSpec(method=spec)
        except ValidationError as e:
            raise ConfigError(str(e.errors()[0]["msg"]).removeprefix("Value error, ")) from e
    if spec.method not in SELECTORS:
        raise ConfigError(f"unknown selection method {spec.method!r}; valid: {', '.join(sorted(SELECTORS))}")
    keep = survivors(result)
    if len(keep) < len(result.candidates):
        # Pruned (and non-finite) candidates take no part: select among the survivors, map back.
        sub = result.model_copy(update={"candidates": [result.candidates[i] for i in keep]})
        sel = select_result(sub, spec, calibration=calibration, num_layers=num_layers, extractor=extractor, probe=probe)
        return on_subset(sel, keep, len(result.candidates))
    layers: Sequence[int] | str = spec.layers
    if spec.method in PROBE_METHODS:
        probe = resolve_probe(probe, calibration, spec.method)
        layers = probe.layers
        try:
            cands, used = candidate_signals(result, layers=layers, num_layers=num_layers, extractor=extractor)
        except ConfigError as e:
            raise ConfigError(f"{e}; the probe reads layers {layers}: request NormSpec(layers='all')") from e
    else:
        cands, used = candidate_signals(result, layers=layers, num_layers=num_layers, extractor=extractor)
    return select_candidates(cands, used, spec, calibration=calibration, probe=probe)


EXCLUDED = ("pruned", "nonfinite")
"""Finish reasons whose candidates selection leaves out (if any candidate is left)."""


def survivors(result: GenerationResult) -> list[int]:
    """The candidates selection considers: all but the pruned and non-finite ones (all, if none is left)."""
    keep = [i for i, c in enumerate(result.candidates) if c.finish_reason not in EXCLUDED]
    return keep or list(range(len(result.candidates)))


def on_subset(sel: Selection, keep: list[int], n: int) -> Selection:
    """A selection made on the subset ``keep`` of ``n`` candidates, expressed on all of them.

    The chosen index and any ``kept`` detail are mapped back to the full list; the candidates left out
    score NaN, and ``details["survivors"]`` lists ``keep``.
    """
    scores = [float("nan")] * n
    for k, s in zip(keep, sel.scores, strict=True):
        scores[k] = s
    details = dict(sel.details)
    if isinstance(details.get("kept"), list):
        details["kept"] = [keep[int(k)] for k in details["kept"]]
    details["survivors"] = list(keep)
    return Selection(sel.method, keep[sel.index], scores, sel.answer, sel.groups, details)


def resolve_probe(probe: Any, calibration: Any, method: str = "l2-probe") -> Probe:
    """The probe to use: the one given, else the calibration's ``probe`` section.

    Raises:
        ConfigError: neither holds a probe.
    """
    if probe is None and calibration is not None:
        probe = getattr(calibration, "probe", None)
    if probe is None:
        raise ConfigError(
            f"selection {method!r} needs a fitted probe and the model's calibration has none: run "
            "`l2reason calibrate --select` (it fits one on a labelled split), or pass probe=..."
        )
    return Probe.from_dict(probe)


def select_candidates(
    cands: Sequence[CandidateSignals],
    used: list[int],
    spec: SelectionSpec,
    *,
    calibration: Any = None,
    probe: Any = None,
) -> Selection:
    """Run one selector on prepared candidates (``band_norms`` columns = ``used``).

    :func:`select_result` is :func:`candidate_signals` followed by this; the
    evaluation calls it directly on subsets of an item's candidates (accuracy
    vs N), so every curve point is computed by exactly the rule of the table.
    """
    tau = None
    params = dict(spec.params)
    if spec.method in L2_METHODS:
        params.setdefault("score", spec.score)
        if spec.tau == "pooled":
            tau = pooled_tau(cands)
        elif spec.tau == "calibrated":
            if calibration is None:
                raise ConfigError("tau='calibrated' needs a calibration; run `l2reason calibrate` or use tau='pooled'")
            tau = calibration.tau_for(used).numpy()
        else:
            if len(spec.tau) != len(used):
                raise ConfigError(f"selection tau has {len(spec.tau)} values for {len(used)} layers {used}")
            tau = np.asarray(spec.tau, dtype=np.float64)
    if spec.method in LOGPROB_METHODS and any(c.token_self_certainty is None for c in cands):
        raise ConfigError(f"selection {spec.method!r} needs logprobs: set GenerationRequest(logprobs=k) (k >= 1)")
    if spec.method in PROBE_METHODS:
        params["probe"] = resolve_probe(probe, calibration, spec.method)
    sel = select(spec.method, cands, tau=tau, seed=spec.seed, **params)
    sel.details.setdefault("layers", used)
    if tau is not None:
        sel.details.setdefault("tau", [float(x) for x in tau])
    return sel


def apply_selection(result: GenerationResult, sel: Selection) -> GenerationResult:
    """Write a selection into ``result`` (``selection`` dict and each candidate's ``score``)."""
    for c, s in zip(result.candidates, sel.scores, strict=False):
        c.score = None if s is None or not np.isfinite(s) else float(s)
    result.selection = {
        "method": sel.method,
        "index": int(sel.index),
        "answer": sel.answer,
        "scores": [None if s is None or not np.isfinite(s) else float(s) for s in sel.scores],
        "groups": sel.groups,
        "details": _jsonable(sel.details),
    }
    return result


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
