"""DSPy modules that run l2reason techniques on every LM call of a wrapped program.

How a setting reaches an LM call, and how the result comes back, without any
per-call state on a module instance (``dspy.Evaluate`` calls one module from
several threads):

1. ``forward`` enters :func:`l2_context` (DSPy's own context, a contextvar):
   the merged, typed :class:`~l2reason.dspy.engine.L2CallSettings` of every
   enclosing module (interventions as spec objects), plus an adapter wrapper
   that writes them as JSON into each LM call's ``metadata`` (part of DSPy's
   cache key) just before the wrapped adapter (ChatAdapter, JSONAdapter, ...)
   calls the LM, and lets the engine test which candidates that adapter can
   parse (:data:`~l2reason.dspy.engine.PARSE_CHECK`): a candidate that does
   not parse is never chosen while one that does exists.
2. A per-call sink is appended to DSPy's ``caller_modules``: DSPy records each
   LM call's history entry (the ``dspy.lm15.Response``, also on a cache hit)
   into the history of every module on that list, so the sink sees exactly the
   calls made inside this ``forward``, in this thread.
3. The ``provider_data["l2reason"]`` summaries of those calls become the
   :class:`L2Report` attached to the returned prediction as ``pred.l2``.

Modules compose (``L2SelectBest(L2Recurse(dspy.ChainOfThought(sig)))``):
interventions add up, other settings of the inner module win.

Program-level selection runs the wrapped program ``n`` times on the caller's
own LMs (each run's calls get ``rollout_id`` + run index and the module's
temperature through the same adapter), so ``lm.history`` shows every call.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import dspy
from dspy.utils.exceptions import AdapterParseError

from l2reason.dspy.engine import PARSE_CHECK, L2CallSettings, L2Engine
from l2reason.errors import CapabilityError, ConfigError

log = logging.getLogger(__name__)

__all__ = ["L2Observe", "L2Recurse", "L2Report", "L2SelectBest", "L2Steer", "l2_context", "l2_report"]

_SETTINGS_KEY = "l2reason_call"  # the key of the merged L2CallSettings in dspy.settings' contextvar
_ROLLOUT_KEY = "l2reason_rollout"  # program-level selection: the run index, added to each call's rollout_id


# ---- settings flow ----------------------------------------------------------------


def _merge(outer: dict[str, Any], inner: dict[str, Any]) -> dict[str, Any]:
    """JSON settings merged: ``inner``'s keys win, interventions add up."""
    out = {**outer, **inner}
    if outer.get("interventions") or inner.get("interventions"):
        out["interventions"] = [*outer.get("interventions", []), *inner.get("interventions", [])]
    return out


class _ParseCheck:
    """For one adapter call: ``system message -> (text -> parses?)``, or ``None`` for a request it did not format.

    The adapter that formatted a request is recognised by its system message:
    the wrapped adapter's, or that of the JSONAdapter a ChatAdapter falls back
    to. Texts are parsed with the adapter's own ``parse``, without the
    callbacks DSPy wraps around it (a check is not a parse of the program's).
    """

    def __init__(self, adapter: Any, signature: Any) -> None:
        self.adapter = adapter
        self.signature = signature

    def _adapters(self) -> Iterator[Any]:
        yield self.adapter
        fallback = getattr(self.adapter, "_make_json_adapter_fallback", None)
        if getattr(self.adapter, "use_json_adapter_fallback", False) and callable(fallback):
            yield fallback()

    def __call__(self, system: str) -> Callable[[str], bool] | None:
        for adapter in self._adapters():
            try:
                if adapter.format_system_message(self.signature) == system:
                    return functools.partial(self._parses, adapter)
            except Exception as e:  # an adapter that formats otherwise: not this one
                log.debug("cannot format %s's system message: %s", type(adapter).__name__, e)
        return None

    def _parses(self, adapter: Any, text: str) -> bool:
        parse = inspect.unwrap(type(adapter).parse)
        try:
            parse(adapter, self.signature, text)
        except Exception:
            return False
        return True


class _L2Adapter:
    """Wraps a DSPy adapter; writes the current l2reason settings into each LM call's ``metadata``.

    Also sets :data:`~l2reason.dspy.engine.PARSE_CHECK` for the call, and,
    inside a program-level run, the run's ``rollout_id`` and temperature.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def _kwargs(self, lm: Any, lm_kwargs: dict[str, Any]) -> dict[str, Any]:
        s: L2CallSettings | None = dspy.settings.get(_SETTINGS_KEY)
        if s is None:
            return lm_kwargs
        lm_defaults = getattr(lm, "kwargs", {})
        meta = {**(lm_defaults.get("metadata") or {}), **(lm_kwargs.get("metadata") or {})}
        # the one place the typed settings become JSON (DSPy hashes metadata into its cache key)
        meta["l2reason"] = _merge(dict(meta.get("l2reason") or {}), s.to_json(exclude={"temperature"}))
        out = {**lm_kwargs, "metadata": meta}
        if s.temperature is not None:
            out["temperature"] = s.temperature
        run = dspy.settings.get(_ROLLOUT_KEY)
        if run is not None:
            out["rollout_id"] = int(lm_kwargs.get("rollout_id", lm_defaults.get("rollout_id")) or 0) + run
        return out

    def __call__(self, lm: Any, lm_kwargs: dict[str, Any], signature: Any, demos: Any, inputs: Any) -> Any:
        token = PARSE_CHECK.set(_ParseCheck(self.inner, signature))
        try:
            return self.inner(lm, self._kwargs(lm, lm_kwargs), signature, demos, inputs)
        finally:
            PARSE_CHECK.reset(token)

    async def acall(self, lm: Any, lm_kwargs: dict[str, Any], signature: Any, demos: Any, inputs: Any) -> Any:
        token = PARSE_CHECK.set(_ParseCheck(self.inner, signature))
        try:
            return await self.inner.acall(lm, self._kwargs(lm, lm_kwargs), signature, demos, inputs)
        finally:
            PARSE_CHECK.reset(token)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@contextmanager
def l2_context(**settings: Any) -> Iterator[L2CallSettings]:
    """Run every LM call inside the block with these l2reason call settings.

    Nested contexts merge: interventions add up, other keys of the inner
    context win. Thread- and task-local (DSPy's settings contextvar; DSPy's
    ``ParallelExecutor`` carries it into its worker threads).

    Args:
        **settings: fields of :class:`~l2reason.dspy.engine.L2CallSettings`
            (``n``, ``selection``, ``interventions`` (specs or dicts),
            ``score``, ``tau``, ...).

    Yields:
        the merged :class:`~l2reason.dspy.engine.L2CallSettings`.

    Raises:
        ConfigError: a bad field, before any LM call.

    Example:
        >>> import dspy
        >>> with l2_context(n=4, selection={"method": "l2"}):  # doctest: +SKIP
        ...     dspy.Predict("q -> a")(q="2+2?")
    """
    outer: L2CallSettings | None = dspy.settings.get(_SETTINGS_KEY)
    inner = L2CallSettings.parse(settings)  # fail before any LM call, naming the field
    merged = inner if outer is None else outer.updated(inner, add_interventions=True)
    adapter = dspy.settings.adapter
    if not isinstance(adapter, _L2Adapter):
        adapter = _L2Adapter(adapter if adapter is not None else dspy.ChatAdapter())
    with dspy.context(**{_SETTINGS_KEY: merged}, adapter=adapter):
        yield merged


class _Sink:
    """A per-call stand-in on DSPy's ``caller_modules`` list: DSPy appends LM history entries to ``.history``."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []

    def summaries(self) -> list[dict[str, Any]]:
        out = []
        for entry in self.history:
            resp = entry.get("response")
            responses = resp if isinstance(resp, (list, tuple)) else [resp]
            for r in responses:
                pd = getattr(r, "provider_data", None)
                if isinstance(pd, dict) and isinstance(pd.get("l2reason"), dict):
                    out.append(pd["l2reason"])
        return out


@contextmanager
def _collect() -> Iterator[_Sink]:
    sink = _Sink()
    if dspy.settings.disable_history or dspy.settings.max_history_size == 0:
        log.warning("DSPy history is disabled: ℓ2 reports of this call will be empty")
    with dspy.context(caller_modules=[*(dspy.settings.caller_modules or []), sink]):
        yield sink


# ---- the report ------------------------------------------------------------------


@dataclass
class L2Report:
    """What an l2reason module did in one call, attached to its prediction as ``pred.l2``.

    Args:
        technique: ``"select"``, ``"steer"``, ``"recurse"`` or ``"observe"``.
        score_name: the ℓ2 score used (``"B/T"``, ...).
        score: the prediction's ℓ2 score: the mean over its LM calls of the
            chosen candidate's score (``None`` when no call had norms).
        calls: one ``provider_data["l2reason"]`` summary per LM call, in order.
        candidate_scores: per LM call, the score of every candidate (call-level selection).
        runs: program-level selection: per run, ``{"score", "calls", "parsed"}``
            (``parsed``: the run returned a prediction, no ``AdapterParseError``).
        chosen_run: program-level selection: the index of the returned run.

    ``parsed`` (a property) says whether the chosen candidates' texts parsed
    into the signature's output fields: ``False`` when, in some LM call, none of
    the ``n`` candidates did (the selector's choice was returned; a warning was
    logged), ``None`` when no call was checked (``n == 1``).

    Example:
        >>> L2Report("observe", "B/T", 0.5, []).score
        0.5
    """

    technique: str
    score_name: str
    score: float | None
    calls: list[dict[str, Any]]
    candidate_scores: list[list[float | None]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    chosen_run: int | None = None

    @property
    def interventions(self) -> list[dict[str, Any]]:
        """Per LM call, what the interventions did to the chosen candidate."""
        return [c.get("interventions", {}) for c in self.calls]

    @property
    def parsed(self) -> bool | None:
        """Did every checked LM call return a candidate that parses? ``None``: no call was checked."""
        flags = [c["parsed"] for c in self.calls if c.get("parsed") is not None]
        return all(flags) if flags else None

    def to_dict(self) -> dict[str, Any]:
        """The fields, then ``parsed`` (plain data, not copied)."""
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "parsed": self.parsed}


def call_score(call: dict[str, Any], score: str) -> float | None:
    """The chosen candidate's ``score`` in one call summary."""
    v = (call.get("scores") or {}).get(score)
    return None if v is None or not math.isfinite(v) else float(v)


def aggregate(calls: list[dict[str, Any]], score: str) -> float | None:
    """Mean over calls of the chosen candidates' score; ``None`` if no call has one."""
    vals = [v for v in (call_score(c, score) for c in calls) if v is not None]
    return sum(vals) / len(vals) if vals else None


def l2_report(pred: Any) -> L2Report | None:
    """The :class:`L2Report` attached to a prediction by an l2reason module, or ``None``."""
    rep = getattr(pred, "__dict__", {}).get("l2")
    return rep if isinstance(rep, L2Report) else None


def _attach(pred: Any, report: L2Report) -> Any:
    if isinstance(pred, dspy.Prediction):
        # Not an output field: stored beside the fields so metrics, demos and
        # Evaluate tables see only what the signature produces.
        object.__setattr__(pred, "l2", report)
    return pred


# ---- the modules -----------------------------------------------------------------


def _check_module(module: Any, who: str) -> None:
    if not isinstance(module, dspy.Module):
        raise ConfigError(
            f"{who} wraps a dspy.Module (e.g. dspy.ChainOfThought('question -> answer')), got {type(module).__name__}"
        )


def _check_score(score: str) -> str:
    from l2reason.techniques.selection import SCORE_NAMES

    if score not in SCORE_NAMES:
        raise ConfigError(f"unknown score {score!r}; valid scores: {', '.join(SCORE_NAMES)}")
    return score


def _engines(module: dspy.Module) -> list[tuple[Any, L2Engine | None]]:
    lms = [p.lm for p in module.predictors() if getattr(p, "lm", None) is not None]
    if len(lms) < len(module.predictors()) or not lms:
        lms.append(dspy.settings.lm)
    out = []
    for lm in {id(x): x for x in lms}.values():
        eng = getattr(lm, "engine", None)
        out.append((lm, eng if isinstance(eng, L2Engine) else None))
    return out


class _L2Module(dspy.Module):
    """Shared plumbing: settings in, report out."""

    technique = "observe"

    def __init__(self, module: dspy.Module, *, score: str = "B/T") -> None:
        super().__init__()
        _check_module(module, type(self).__name__)
        self.module = module
        self.score = _check_score(score)

    def call_settings(self) -> dict[str, Any]:
        """This module's contribution to every LM call's settings."""
        return {"score": self.score}

    def _check_lms(self, settings: L2CallSettings) -> None:
        kinds = {spec.kind for spec in settings.interventions}
        for lm, eng in _engines(self.module):
            if lm is None:
                raise ConfigError("no LM is configured: call l2reason.dspy.configure_dspy(...) first")
            if eng is None:
                raise ConfigError(
                    f"{type(self).__name__} needs an l2reason LM (dspy.LM with engine=L2Engine, e.g. from "
                    f"l2reason.dspy.configure_dspy); got {getattr(lm, 'model', lm)!r}"
                )
            missing = kinds - set(eng.backend.capabilities.interventions)
            if missing:
                raise CapabilityError(
                    f"{type(self).__name__}: backend {eng.name!r} cannot run {sorted(missing)}; it supports: "
                    f"{sorted(eng.backend.capabilities.interventions) or 'no interventions'}"
                )

    def forward(self, **kwargs: Any) -> Any:
        with l2_context(**self.call_settings()) as merged, _collect() as sink:
            self._check_lms(merged)
            pred = self.module(**kwargs)
        return _attach(pred, self._report(sink.summaries()))

    async def aforward(self, **kwargs: Any) -> Any:
        with l2_context(**self.call_settings()) as merged, _collect() as sink:
            self._check_lms(merged)
            pred = await self.module.acall(**kwargs)
        return _attach(pred, self._report(sink.summaries()))

    def _report(self, calls: list[dict[str, Any]]) -> L2Report:
        return L2Report(self.technique, self.score, aggregate(calls, self.score), calls)


class L2Observe(_L2Module):
    """Run a module unchanged and attach the ℓ2 statistics of its LM calls (``pred.l2``).

    Args:
        module: any DSPy module or program.
        score: the ℓ2 score to report (``B/T``, ``A/T``, ``C/T``, ``D/T``, ``z_mean``).

    Example:
        >>> import dspy
        >>> prog = L2Observe(dspy.Predict("question -> answer"))
        >>> prog(question="2+2?").l2.score  # doctest: +SKIP
    """


class L2Recurse(_L2Module):
    """Every LM call inside runs with Adaptive Layer-wise Reasoning Recursion (ALRR).

    Args:
        module: any DSPy module or program.
        score: the ℓ2 score reported in ``pred.l2``.
        **alrr: fields of :class:`~l2reason.techniques.specs.ALRRSpec`
            (``K``, ``g``, ``b``, ``layers``, ``mode``, ``threshold``).

    Raises:
        ConfigError: a bad ALRR setting or a non-module.
        CapabilityError: (at call time) the backend cannot recurse.

    Example:
        >>> import dspy
        >>> prog = L2Recurse(dspy.ChainOfThought("question -> answer"), K=1, g=0.2)
        >>> prog(question="What is 12*7?").l2.interventions  # doctest: +SKIP
    """

    technique = "recurse"

    def __init__(self, module: dspy.Module, *, score: str = "B/T", **alrr: Any) -> None:
        from l2reason.techniques.specs import parse_interventions

        super().__init__(module, score=score)
        [self.spec] = parse_interventions([{"kind": "alrr", **alrr}])

    def call_settings(self) -> dict[str, Any]:
        return {**super().call_settings(), "interventions": [self.spec]}


class L2Steer(_L2Module):
    """Every LM call inside runs with ERSS (self-steering) or static steering.

    Args:
        module: any DSPy module or program.
        method: ``"erss"`` (Endogenous Reasoning State Steering, default) or
            ``"static"`` (``x + α·v`` with fixed vectors).
        score: the ℓ2 score reported in ``pred.l2``.
        **spec: fields of :class:`~l2reason.techniques.specs.ERSSSpec`
            (``beta``, ``M``, ``S``, ``p``, ``C``, ``c_min``, ``layers``, ...)
            or, for ``"static"``, :class:`~l2reason.techniques.specs.StaticSteerSpec`
            (``vectors={layer: [d floats]}``, ``alpha``, ``norm_preserving``).

    Example:
        >>> import dspy
        >>> agent = L2Steer(dspy.ReAct("question -> answer", tools=[]), beta=0.3)
        >>> agent(question="...").l2.interventions  # doctest: +SKIP
    """

    technique = "steer"

    def __init__(
        self, module: dspy.Module, *, method: Literal["erss", "static"] = "erss", score: str = "B/T", **spec: Any
    ) -> None:
        from l2reason.techniques.specs import parse_interventions

        super().__init__(module, score=score)
        kinds = {"erss": "erss", "static": "static_steer"}
        if method not in kinds:
            raise ConfigError(f"unknown steering method {method!r}; use 'erss' or 'static'")
        [self.spec] = parse_interventions([{"kind": kinds[method], **spec}])

    def call_settings(self) -> dict[str, Any]:
        return {**super().call_settings(), "interventions": [self.spec]}


class L2SelectBest(_L2Module):
    """Sample ``n`` and keep the best by ℓ2 score, per LM call or per program run.

    Args:
        module: any DSPy module or program.
        n: candidates (call level) or runs (program level), ``>= 1``.
        score: the ℓ2 score (``B/T`` default; ``A/T``, ``C/T``, ``D/T``, ``z_mean``),
            or ``"probe"``: select with the learned probe stored in the
            backend's calibration file by ``l2reason calibrate --select``
            (``l2-probe``; call level only; the calls then capture every
            layer's norms and the top-20 logprobs the probe reads).
        vote: call level: ℓ2-weighted vote over extracted final answers
            (``l2-vote``, or ``l2-probe-vote`` with ``score="probe"``) instead
            of argmax of the score.
        level: ``"call"`` (default): every LM call inside samples ``n``
            candidates in one batched backend call and keeps the best;
            ``"program"``: run the whole program ``n`` times (different
            rollouts) and return the run whose LM calls have the best mean
            score, like ``dspy.BestOfN`` without a reward function. A run
            whose output does not parse (``AdapterParseError``) is never
            chosen while another parses; if none does, the last error is raised.
        temperature: sampling temperature of the candidates/runs.
        method: call level: any selector of ``l2reason.techniques.baselines.SELECTORS``
            (``l2``, ``majority``, ``self-certainty``, ...) to compare against ℓ2.
        tau: ``"pooled"`` (default) or ``"calibrated"``.

    The prediction's ``l2`` report holds the score and every candidate's
    (``candidate_scores``) or every run's (``runs``) score.

    Example:
        >>> import dspy
        >>> best = L2SelectBest(dspy.ChainOfThought("question -> answer"), n=4)
        >>> pred = best(question="What is 17*3?")  # doctest: +SKIP
        >>> pred.l2.score, pred.l2.candidate_scores  # doctest: +SKIP
    """

    technique = "select"

    def __init__(
        self,
        module: dspy.Module,
        n: int = 8,
        *,
        score: str = "B/T",
        vote: bool = False,
        level: Literal["call", "program"] = "call",
        temperature: float = 0.7,
        method: str | None = None,
        tau: Literal["pooled", "calibrated"] = "pooled",
    ) -> None:
        probe = score == "probe"
        super().__init__(module, score="B/T" if probe else score)
        self.score = score
        if probe and level != "call":
            raise ConfigError('score="probe" selects within one LM call: use level="call"')
        if probe and method is not None and not method.startswith("l2-probe"):
            raise ConfigError(f'score="probe" selects with the probe; method {method!r} would ignore it')
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n must be an integer >= 1 (got {n!r})")
        if level not in ("call", "program"):
            raise ConfigError(f"level must be 'call' or 'program' (got {level!r})")
        if not 0.0 <= temperature <= 2.0:
            raise ConfigError(f"temperature must be in [0, 2] (got {temperature})")
        if method is not None:
            from l2reason.techniques.baselines import SELECTORS

            if method not in SELECTORS:
                raise ConfigError(f"unknown selection method {method!r}; valid: {', '.join(sorted(SELECTORS))}")
            if vote:
                raise ConfigError("give either vote=True or method=..., not both")
        self.n = n
        self.vote = vote
        self.level = level
        self.temperature = float(temperature)
        if probe:
            self.method = method or ("l2-probe-vote" if vote else "l2-probe")
        else:
            self.method = method or ("l2-vote" if vote else "l2")
        self.tau = tau

    def call_settings(self) -> dict[str, Any]:
        s = {**super().call_settings(), "tau": self.tau}
        if self.level == "call" and self.n > 1:
            s.update(
                n=self.n,
                selection={
                    "method": self.method,
                    "score": "B/T" if self.score == "probe" else self.score,
                    "tau": self.tau,
                },
                temperature=self.temperature,
            )
            if self.score == "probe":
                s["layers"] = "all"
        elif self.level == "program":
            s["temperature"] = self.temperature  # every call of every run (the runs differ by rollout_id)
        return s

    def _report(self, calls: list[dict[str, Any]]) -> L2Report:
        rep = super()._report(calls)
        rep.candidate_scores = [[cand["scores"].get(self.score) for cand in c.get("candidates", [])] for c in calls]
        return rep

    def forward(self, **kwargs: Any) -> Any:
        if self.level == "call":
            return super().forward(**kwargs)
        runs: list[tuple[Any, list[dict[str, Any]]]] = []
        with self._program():
            for i in range(self.n):
                with _run(i, self.n, runs) as out:
                    out["pred"] = self.module(**kwargs)
        return self._pick(runs)

    async def aforward(self, **kwargs: Any) -> Any:
        if self.level == "call":
            return await super().aforward(**kwargs)
        runs: list[tuple[Any, list[dict[str, Any]]]] = []
        with self._program():
            for i in range(self.n):
                with _run(i, self.n, runs) as out:
                    out["pred"] = await self.module.acall(**kwargs)
        return self._pick(runs)

    @contextmanager
    def _program(self) -> Iterator[L2CallSettings]:
        """Program level: this module's settings around all runs, the LMs checked once."""
        with l2_context(**self.call_settings()) as merged:
            self._check_lms(merged)
            yield merged

    def _pick(self, runs: list[tuple[Any, list[dict[str, Any]]]]) -> Any:
        """The best-scoring run among those that parsed; the last parse error if none did."""
        scores = _run_scores([calls for _, calls in runs], self.score)
        ok = [not isinstance(pred, AdapterParseError) for pred, _ in runs]
        if not any(ok):
            raise runs[-1][0]
        safe = [-math.inf if s is None else s for s in scores]
        best = max((i for i in range(len(runs)) if ok[i]), key=lambda i: (safe[i], -i))
        rep = L2Report(
            self.technique,
            self.score,
            scores[best],
            runs[best][1],
            runs=[
                {"score": s, "calls": calls, "parsed": good}
                for s, (_, calls), good in zip(scores, runs, ok, strict=True)
            ],
            chosen_run=best,
        )
        return _attach(runs[best][0], rep)


@contextmanager
def _run(index: int, n: int, runs: list[tuple[Any, list[dict[str, Any]]]]) -> Iterator[dict[str, Any]]:
    """One program-level run: its LM calls get ``rollout_id + index`` (:class:`_L2Adapter`) and are collected.

    Appends ``(prediction, call summaries)`` to ``runs``; a run whose output
    does not parse appends its ``AdapterParseError`` instead (logged).
    """
    out: dict[str, Any] = {}
    with dspy.context(**{_ROLLOUT_KEY: index}), _collect() as sink:
        try:
            yield out
        except AdapterParseError as e:
            log.warning(
                "program-level run %d of %d did not parse (%s); it is not chosen while another does", index, n, e
            )
            out["pred"] = e
    runs.append((out["pred"], sink.summaries()))


def _run_scores(runs: list[list[dict[str, Any]]], score: str) -> list[float | None]:
    """Program-level score per run: the mean call score, or for ``z_mean`` a z-score across runs.

    ``z_mean``: per run, the mean over its calls of the chosen candidate's
    per-layer mean norm; each layer z-scored across runs (population std; a
    layer with std 0 contributes 0); the mean over layers.
    """
    if score != "z_mean":
        return [aggregate(r, score) for r in runs]
    import numpy as np

    vecs: list[np.ndarray | None] = []
    for r in runs:
        means = [c["candidates"][c["chosen"]].get("mean") for c in r if c.get("candidates")]
        means = [m for m in means if m and all(x is not None for x in m)]
        widths = {len(m) for m in means}
        vecs.append(np.mean(np.asarray(means, dtype=np.float64), axis=0) if means and len(widths) == 1 else None)
    ok = [v for v in vecs if v is not None]
    if len(ok) < 2 or len({v.shape for v in ok}) != 1:
        return [0.0 if v is not None else None for v in vecs]
    arr = np.stack(ok)  # [runs_with_norms, n_layers]
    mu, sd = arr.mean(0), arr.std(0)
    z = np.where(sd > 0, (arr - mu) / np.where(sd > 0, sd, 1.0), 0.0).mean(1)
    it = iter(z.tolist())
    return [float(next(it)) if v is not None else None for v in vecs]
