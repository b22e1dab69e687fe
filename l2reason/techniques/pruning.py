"""Online pruning of a request's candidates: the running score, the rule, and its offline twin.

``docs/techniques.md``, "Online pruning". Every row (candidate) turns each
generated token into a signal (DeepConf token confidence, self-certainty, or
an ℓ2 statistic of the token's norms). Its *running score* after ``L``
tokens is the mean signal over its last ``min(window, L)`` tokens; its
*lowest score* is the minimum running score from ``L = warmup`` on. A running
row is pruned as soon as its lowest score is below the threshold (a fixed
value, or one set from the first rows that finish, as DeepConf's online mode
does); at most ``n - min_keep`` rows are pruned, lowest scores first.

Two implementations of the same rule, kept equal by tests:

- :class:`PruneTracker` is driven step by step by an engine's decode loop
  (the transformers backend calls :meth:`PruneTracker.step` once per decode
  step with the rows that produced a token);
- :func:`simulate` replays the rule on finished rows whose full per-token
  signals are stored. Because a row's tokens depend only on its own seed, a
  pruned row's tokens are exactly the prefix of its unpruned run, so stored
  samples tell what online pruning would have done without generating again.

Both do the same float64 arithmetic in the same order (a cumulative sum per
row, window means from it), so on the same signals they make the same
decisions bit for bit.

The rule object is anything with the fields of
:class:`l2reason.backends.base.PruneSpec` (``threshold``, ``first``,
``quantile``, ``warmup``, ``window``, ``min_keep``; ``score``, ``l2_stat``,
``direction`` for :func:`token_signal`). Host-side numpy, not a captured
decode step.

Example:
    >>> from types import SimpleNamespace
    >>> rule = SimpleNamespace(threshold=0.5, first=1, quantile=0.0, warmup=2, window=2, min_keep=1)
    >>> out = simulate(rule, [np.array([1.0, 1.0, 1.0, 1.0]), np.array([1.0, 0.2, 0.1, 0.1, 0.1])])
    >>> out.pruned_step.tolist(), out.tokens.tolist()
    ([-1, 3], [4, 3])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from l2reason.errors import ConfigError

__all__ = [
    "FINISHED",
    "NONFINITE",
    "PRUNED",
    "RUNNING",
    "PruneOutcome",
    "PruneTracker",
    "simulate",
    "token_signal",
]

RUNNING, FINISHED, PRUNED, NONFINITE = 0, 1, 2, 3


def _fixed_threshold(rule: Any) -> float | None:
    t = rule.threshold
    return None if isinstance(t, str) else float(t)


def token_signal(
    rule: Any,
    *,
    confidence: Any = None,
    self_certainty: Any = None,
    norms: Any = None,
    tau: Any = None,
) -> np.ndarray:
    """The per-token pruning signal of ``rule.score`` (float64; higher = keep).

    Args:
        rule: a ``PruneSpec``-like object (``score``, ``l2_stat``, ``direction``).
        confidence: ``[...]`` DeepConf token confidences (``score="confidence"``).
        self_certainty: ``[...]`` per-token self-certainty (``score="self-certainty"``).
        norms: ``[..., k]`` norms of the rule's ``k`` layers (``score="l2"``).
        tau: ``[k]`` per-layer thresholds (``l2_stat="exceedance"``).

    Returns:
        ``[...]`` signals; for ``"l2"``: the mean over the ``k`` layers of the
        norm (``"mean"``) or of ``1[norm > tau]`` (``"exceedance"``), negated
        when ``direction="low"``.

    Raises:
        ConfigError: the signal the score needs was not given.
    """
    score = rule.score
    if score == "confidence":
        src = confidence
    elif score == "self-certainty":
        src = self_certainty
    elif score == "l2":
        if norms is None:
            raise ConfigError("prune score 'l2' needs the norms of its layers")
        arr = np.ascontiguousarray(np.asarray(norms, dtype=np.float64))
        if getattr(rule, "l2_stat", "mean") == "exceedance":
            if tau is None:
                raise ConfigError("prune l2_stat='exceedance' needs tau")
            arr = np.ascontiguousarray((arr > np.asarray(tau, dtype=np.float64)).astype(np.float64))
        out = arr.mean(-1) if arr.shape[-1] else np.zeros(arr.shape[:-1])
        return -out if getattr(rule, "direction", "high") == "low" else out
    else:
        raise ConfigError(f"unknown prune score {score!r}; valid: confidence, self-certainty, l2")
    if src is None:
        raise ConfigError(f"prune score {score!r} needs per-token {score} values: request logprobs")
    out = np.asarray(src, dtype=np.float64)
    return -out if getattr(rule, "direction", "high") == "low" else out


class PruneTracker:
    """The online pruning state of one request's ``n`` rows (host side, numpy).

    Args:
        rule: a ``PruneSpec``-like object.
        n: the request's rows.
        max_len: the most tokens a row can generate.

    Attributes:
        state: ``[n]`` :data:`RUNNING`, :data:`FINISHED`, :data:`PRUNED` or :data:`NONFINITE`.
        length: ``[n]`` tokens generated so far.
        current: ``[n]`` running score at the row's last token (NaN before its first).
        lowest: ``[n]`` lowest running score from the warm-up on (+inf before it).
        pruned_step: ``[n]`` tokens a pruned row had generated when pruned (-1 if not pruned).
        threshold: the threshold in force (None until ``first-finished`` sets it).
        threshold_step: the step (tokens generated) when it was set (0 for a fixed one).
    """

    def __init__(self, rule: Any, n: int, max_len: int) -> None:
        self.rule = rule
        self.n = int(n)
        self.warmup = max(int(rule.warmup), 1)
        self.window = int(rule.window)
        self.cum = np.zeros((self.n, int(max_len) + 1), dtype=np.float64)
        self.length = np.zeros(self.n, dtype=np.int64)
        self.state = np.full(self.n, RUNNING, dtype=np.int8)
        self.current = np.full(self.n, np.nan)
        self.lowest = np.full(self.n, np.inf)
        self.reference = np.full(self.n, np.nan)  # a finished row's lowest score (its running score if < warm-up)
        self.pruned_step = np.full(self.n, -1, dtype=np.int64)
        self.threshold = _fixed_threshold(rule)
        self.threshold_step: int | None = 0 if self.threshold is not None else None

    def drop(self, rows: Sequence[int]) -> None:
        """Rows that stopped for another reason (non-finite state): never pruned, never a reference."""
        for r in rows:
            if self.state[r] == RUNNING:
                self.state[r] = NONFINITE

    def step(self, rows: Any, values: Any, finished: Any) -> list[int]:
        """One decode step: ``rows`` each produced one token with signal ``values``.

        Args:
            rows: ``[m]`` row indices (each still running).
            values: ``[m]`` float signals of the new tokens (:func:`token_signal`).
            finished: ``[m]`` bool, the row finished on its own with this token
                (EOS, stop string, length limit).

        Returns:
            The rows pruned at this step (lowest scores first), ascending by index.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return []
        vals = np.asarray(values, dtype=np.float64)
        fin = np.asarray(finished, dtype=bool)
        ln = self.length[rows] + 1
        self.length[rows] = ln
        self.cum[rows, ln] = self.cum[rows, ln - 1] + vals
        m = np.minimum(self.window, ln)
        r = (self.cum[rows, ln] - self.cum[rows, ln - m]) / m
        self.current[rows] = r
        self.lowest[rows] = np.where(ln >= self.warmup, np.minimum(self.lowest[rows], r), self.lowest[rows])
        done = rows[fin]
        if done.size:
            self.state[done] = FINISHED
            low = self.lowest[done]
            self.reference[done] = np.where(np.isfinite(low), low, self.current[done])
        if self.threshold is None:
            is_fin = self.state == FINISHED
            if int(is_fin.sum()) >= int(self.rule.first):
                self.threshold = float(np.quantile(self.reference[is_fin], float(self.rule.quantile)))
                self.threshold_step = int(ln.max())
            else:
                return []
        cand = rows[(self.state[rows] == RUNNING) & (self.lowest[rows] < self.threshold)]
        if cand.size == 0:
            return []
        survivors = int(np.sum((self.state == RUNNING) | (self.state == FINISHED)))
        room = survivors - int(self.rule.min_keep)
        if room <= 0:
            return []
        order = sorted(cand.tolist(), key=lambda k: (self.lowest[k], k))[:room]
        self.state[order] = PRUNED
        self.pruned_step[order] = self.length[order]
        return sorted(order)

    def candidate_report(self, row: int) -> dict[str, Any]:
        """What pruning saw of one row (JSON-safe)."""
        pruned = bool(self.state[row] == PRUNED)
        return {
            "pruned": pruned,
            "step": int(self.pruned_step[row]) if pruned else None,
            "score": _num(self.current[row]),
            "lowest": _num(self.lowest[row]),
        }

    def request_report(self) -> dict[str, Any]:
        """What pruning did to the request (JSON-safe)."""
        pruned = [int(i) for i in np.flatnonzero(self.state == PRUNED)]
        return {
            "score": self.rule.score,
            "threshold": None if self.threshold is None else float(self.threshold),
            "threshold_step": self.threshold_step,
            "pruned": pruned,
            "pruned_steps": [int(self.pruned_step[i]) for i in pruned],
            "survivors": int(np.sum((self.state == RUNNING) | (self.state == FINISHED))),
        }


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


@dataclass
class PruneOutcome:
    """What the pruning rule does to one request's stored rows (:func:`simulate`).

    Args:
        pruned_step: ``[n]`` tokens each row had generated when pruned (-1 = not pruned).
        tokens: ``[n]`` tokens each row generates with pruning.
        lowest: ``[n]`` each row's lowest running score when it stopped (NaN if never scored).
        threshold: the threshold (None: ``first-finished`` never set one).
        threshold_step: when it was set (0 for a fixed threshold).
    """

    pruned_step: np.ndarray
    tokens: np.ndarray
    lowest: np.ndarray
    threshold: float | None
    threshold_step: int | None

    @property
    def survivors(self) -> np.ndarray:
        """``[n]`` bool: rows not pruned."""
        return self.pruned_step < 0


def running_scores(signal: Any, window: int, warmup: int) -> tuple[np.ndarray, np.ndarray]:
    """``(running, lowest)``: ``[T]`` running scores after 1..T tokens, and their minimum from ``warmup`` on."""
    v = np.asarray(signal, dtype=np.float64)
    t_len = v.size
    cum = np.zeros(t_len + 1)
    cum[1:] = np.cumsum(v)
    steps = np.arange(1, t_len + 1)
    m = np.minimum(int(window), steps)
    r = (cum[steps] - cum[steps - m]) / m
    low = np.minimum.accumulate(np.where(steps >= max(int(warmup), 1), r, np.inf)) if t_len else r
    return r, low


def simulate(rule: Any, signals: Sequence[Any], precomputed: Sequence[tuple[Any, Any]] | None = None) -> PruneOutcome:
    """Replay the pruning rule on one request's finished rows.

    Every row ran to its own end (EOS, stop string or length limit) after
    ``len(signals[j])`` tokens; the result is what :class:`PruneTracker` would
    have decided online, step for step.

    Args:
        rule: a ``PruneSpec``-like object.
        signals: one ``[T_j]`` per-token signal array per row (:func:`token_signal`).
        precomputed: optional ``(running, lowest)`` per row from :func:`running_scores`
            with the rule's window and warm-up (to sweep thresholds cheaply).

    Returns:
        A :class:`PruneOutcome`.
    """
    n = len(signals)
    if n == 0:
        raise ConfigError("simulate needs at least one row")
    rs = (
        list(precomputed) if precomputed is not None else [running_scores(s, rule.window, rule.warmup) for s in signals]
    )
    lens = np.array([len(r) for r, _ in rs], dtype=np.int64)
    ref = np.array([(low[-1] if np.isfinite(low[-1]) else r[-1]) if len(r) else np.nan for r, low in rs])
    thr = _fixed_threshold(rule)
    start = 1
    if thr is None:
        first = int(rule.first)
        if first > n:
            return PruneOutcome(np.full(n, -1), lens.copy(), _last_lowest(rs, lens), None, None)
        t_star = int(np.sort(lens)[first - 1])
        fin = lens <= t_star
        thr = float(np.quantile(ref[fin], float(rule.quantile)))
        start, step0 = t_star, t_star
    else:
        step0 = 0
    events: list[tuple[int, float, int]] = []
    for j, (_, low) in enumerate(rs):
        if lens[j] <= start:  # finished on its own before (or at) the first check
            continue
        hit = np.flatnonzero(low[start - 1 : lens[j] - 1] < thr)  # steps start .. T_j - 1
        if hit.size:
            step = start + int(hit[0])
            events.append((step, float(low[step - 1]), j))
    events.sort()
    pruned_step = np.full(n, -1, dtype=np.int64)
    room = n - int(rule.min_keep)
    for step, _, j in events:
        if room <= 0:
            break
        pruned_step[j] = step
        room -= 1
    tokens = np.where(pruned_step >= 0, pruned_step, lens)
    lowest = _last_lowest(rs, tokens)
    return PruneOutcome(pruned_step, tokens, lowest, thr, step0)


def _last_lowest(rs: Sequence[tuple[Any, Any]], upto: np.ndarray) -> np.ndarray:
    out = np.full(len(rs), np.nan)
    for j, (_, low) in enumerate(rs):
        k = int(upto[j])
        if k > 0 and np.isfinite(low[k - 1]):
            out[j] = low[k - 1]
    return out
