"""The ℓ2 score of a prediction as a DSPy metric.

A metric here reads the :class:`~l2reason.dspy.modules.L2Report` that an
l2reason module (:class:`L2Observe`, :class:`L2SelectBest`, :class:`L2Steer`,
:class:`L2Recurse`) attached to the prediction (``pred.l2``): the mean over
the program's LM calls of the chosen candidate's ℓ2 score.

Forms:

- 3 arguments ``(example, pred, trace=None) -> float``: ``dspy.Evaluate``,
  ``BootstrapFewShot`` (give ``metric_threshold``), ``MIPROv2``.
- 5 arguments ``(gold, pred, trace, pred_name, pred_trace)``: GEPA. With a
  ``pred_name`` it returns ``dspy.Prediction(score=..., feedback=...)``.
  One function serves both.

Range. ``C/T`` (the default here) is the fraction of decode tokens whose norm
exceeds the layer's threshold τ, averaged over the band layers: in ``[0, 1]``.
``B/T`` and ``A/T`` are in norm units (``>= 0``, unbounded; compare only on one
model); ``D/T`` is ``B/T`` over the last 30% of tokens; ``z_mean`` is a z-score
across the candidates of one call (0 for a single candidate).

What "unsupervised prompt optimisation with the ℓ2 metric" means: the
optimizer keeps the demos / instructions under which the model's late-layer
residual norms spike more often, needing no labels. It can mislead:

- The threshold. With ``tau="pooled"`` (the default) τ is computed from the
  same call's tokens (Q3 + 1.5·IQR), so ``C/T`` measures how *spiky* a trace is
  relative to itself, not against a fixed reference; calibrate the model
  (``l2reason calibrate``) and use ``tau="calibrated"`` for comparable scores.
- Length and format. Very short outputs (one-word answers) have few tokens
  and noisy scores; outputs that break the adapter's format still score.
- Goodhart. The score rewards a *correlate* of deliberate reasoning; an
  optimizer can find prompts that raise it without raising accuracy (e.g.
  demos that make the model emit numbers or repeat itself). Always check the
  compiled program against labels on a dev split (``recipes/compile_l2_metric.py``
  does), or mix in correctness with :func:`l2_combined`.
- Small models and short answers are where the paper's effect is least certain.

Example:
    >>> import dspy
    >>> from l2reason.dspy import L2Observe, l2_metric
    >>> ev = dspy.Evaluate(devset=dev, metric=l2_metric)  # doctest: +SKIP
    >>> ev(L2Observe(dspy.ChainOfThought("question -> answer")))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from l2reason.errors import ConfigError

__all__ = ["confidence_metric", "l2_combined", "l2_metric", "make_confidence_metric", "make_l2_metric"]


def _report_of(pred: Any) -> Any:
    """The prediction's :class:`~l2reason.dspy.modules.L2Report`; a ConfigError that says what to do without one."""
    from l2reason.dspy.modules import l2_report

    rep = l2_report(pred)
    if rep is None:
        raise ConfigError(
            "the prediction carries no ℓ2 report: wrap the program in an l2reason module "
            "(L2Observe, L2SelectBest, L2Steer or L2Recurse) and use an l2reason LM"
        )
    return rep


def _score_of(pred: Any, score: str) -> tuple[float | None, Any]:
    from l2reason.dspy.modules import aggregate

    rep = _report_of(pred)
    v = rep.score if rep.score_name == score else aggregate(rep.calls, score)
    return v, rep


def make_l2_metric(score: str = "C/T", *, missing: float = 0.0) -> Callable[..., Any]:
    """An ℓ2 metric on one score.

    Args:
        score: ``C/T`` (fraction above τ, in [0, 1]; default), ``B/T``,
            ``A/T``, ``D/T`` or ``z_mean``.
        missing: the value when the prediction has no norms (e.g. every LM
            call came back empty).

    Returns:
        ``metric(example, pred, trace=None, pred_name=None, pred_trace=None)``.

    Example:
        >>> m = make_l2_metric("B/T")
        >>> m.__name__
        'l2_metric_B/T'
    """
    from l2reason.techniques.selection import SCORE_NAMES

    if score not in SCORE_NAMES:
        raise ConfigError(f"unknown score {score!r}; valid scores: {', '.join(SCORE_NAMES)}")

    def value_of(pred: Any) -> tuple[float | None, int]:
        v, rep = _score_of(pred, score)
        return v, len(rep.calls)

    meaning = "higher = the model's late-layer residual norms exceeded τ more often"
    return _metric(value_of, f"ℓ2 {score}", meaning, missing, f"l2_metric_{score}")


def _metric(
    value_of: Callable[[Any], tuple[float | None, int]], label: str, meaning: str, missing: float, name: str
) -> Callable[..., Any]:
    """A metric with the 3- and 5-argument forms from ``value_of(pred) -> (value or None, LM calls)``."""

    def metric(example: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
        v, n_calls = value_of(pred)
        value = missing if v is None or not math.isfinite(v) else float(v)
        if pred_name is None:
            return value
        import dspy

        fb = f"{label} = {value:.4f} over {n_calls} LM call(s) ({meaning})."
        return dspy.Prediction(score=value, feedback=fb)

    metric.__name__ = name
    return metric


#: The default ℓ2 metric: ``C/T`` in [0, 1].
l2_metric = make_l2_metric("C/T")
l2_metric.__name__ = "l2_metric"


def l2_combined(
    correctness: Callable[..., Any], *, weight: float = 0.2, score: str = "C/T", missing: float = 0.0
) -> Callable[..., Any]:
    """Mix a correctness metric with the ℓ2 score: ``(1 − w)·correct + w·ℓ2``.

    Args:
        correctness: ``metric(example, pred, trace=None)`` returning a bool or
            a float in [0, 1] (or GEPA's ``Prediction(score, feedback)``).
        weight: w in [0, 1]; with ``C/T`` the result stays in [0, 1].
        score: the ℓ2 score (see :func:`make_l2_metric`).
        missing: the ℓ2 value when the prediction has no norms.

    Returns:
        a metric with the 3- and 5-argument forms.

    Example:
        >>> exact = lambda ex, pred, trace=None: float(ex.answer == pred.answer)
        >>> m = l2_combined(exact, weight=0.1)
        >>> m.__name__
        'l2_combined'
    """
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"weight must be in [0, 1] (got {weight})")
    l2m = make_l2_metric(score, missing=missing)

    def metric(example: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
        raw = correctness(example, pred, trace)
        c_fb = getattr(raw, "feedback", None) if not isinstance(raw, (bool, int, float)) else None
        c = float(getattr(raw, "score", raw))
        value = (1.0 - weight) * c + weight * float(l2m(example, pred, trace))
        if pred_name is None:
            return value
        import dspy

        fb = f"correctness = {c:.3f}; " + l2m(example, pred, trace, pred_name, pred_trace).feedback
        if c_fb:
            fb = f"{c_fb}\n{fb}"
        return dspy.Prediction(score=value, feedback=fb)

    metric.__name__ = "l2_combined"
    return metric


#: The logprob selectors whose per-candidate score a confidence metric can read (higher = more confident).
CONFIDENCE_METHODS = ("self-certainty", "deepconf", "deepconf-tail")


def _confidence_of(pred: Any, method: str) -> tuple[float | None, int]:
    """Mean over the prediction's LM calls of the chosen candidate's ``method`` score (``None``: no value)."""
    rep = _report_of(pred)
    vals: list[float] = []
    seen = False
    for call in rep.calls:
        sel = call.get("selection") or {}
        if sel.get("method") != method:
            continue
        seen = True
        scores = sel.get("scores") or []
        i = call.get("chosen", 0)
        v = scores[i] if i < len(scores) else None
        if v is not None and math.isfinite(v):
            vals.append(float(v))
    if rep.calls and not seen:
        raise ConfigError(
            f"no LM call of this prediction was scored by {method!r}: configure the LM with "
            f'selection={{"method": "{method}"}} (e.g. configure_dspy(model, selection={{"method": "{method}"}}); '
            "with n=1 the single candidate is kept and only scored) or call inside "
            f'l2_context(selection={{"method": "{method}"}})'
        )
    return (sum(vals) / len(vals) if vals else None), len(rep.calls)


def make_confidence_metric(method: str = "self-certainty", *, missing: float = 0.0) -> Callable[..., Any]:
    """A label-free confidence metric: the model's own token confidence, the baseline an ℓ2 metric must beat.

    It reads the score that the LM's ``method`` selector gave the chosen
    candidate of each LM call (``provider_data["l2reason"]["selection"]``) and
    averages it over the prediction's calls, so the LM must run that selector:
    ``configure_dspy(model, selection={"method": "self-certainty"})``. With
    ``n=1`` the selector only scores the single candidate (the output is the
    same as without it); the engine then asks the backend for top-5 logprobs.
    The ℓ2 scores are still in the same summaries, so one run serves both
    :func:`l2_metric` and this metric.

    Args:
        method: ``self-certainty`` (Kang et al. 2025: the mean over tokens of
            the top-k distribution's KL divergence from uniform; ``>= 0``),
            ``deepconf`` (DeepConf's lowest-group confidence, Fu et al. 2025)
            or ``deepconf-tail`` (its tail confidence). Higher = more confident;
            all unbounded, in nats: compare only on one model.
        missing: the value when no call has a finite score.

    Returns:
        ``metric(example, pred, trace=None, pred_name=None, pred_trace=None)``.

    Raises:
        ConfigError: an unknown method; at call time, a prediction without an
            ℓ2 report or whose calls were not scored by ``method``.

    Example:
        >>> m = make_confidence_metric("deepconf")
        >>> m.__name__
        'confidence_metric_deepconf'
    """
    if method not in CONFIDENCE_METHODS:
        raise ConfigError(f"unknown confidence method {method!r}; valid: {', '.join(CONFIDENCE_METHODS)}")
    meaning = "higher = the model was more confident in its tokens"
    return _metric(lambda pred: _confidence_of(pred, method), method, meaning, missing, f"confidence_metric_{method}")


#: The default confidence metric: self-certainty (needs an LM run with ``selection={"method": "self-certainty"}``).
confidence_metric = make_confidence_metric("self-certainty")
confidence_metric.__name__ = "confidence_metric"
