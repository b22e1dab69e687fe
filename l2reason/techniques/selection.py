"""ℓ2-guided Response Selection (LRS): pick one of N candidates by its norms.

``docs/techniques.md``, "Statistics and scores". For each candidate and band layer l, with a fixed
calibrated τ_l, the statistics A = Σ n_t, B = Σ max(0, n_t − τ_l),
C = Σ 1[n_t > τ_l] and D = B over the last 30% of steps come from
:func:`l2reason.signal.stats.abcd_stats`; a score is one of them divided by
length and averaged over the band (``A/T``, ``B/T``, ``C/T``, ``D/T``; ``D``
is divided by the tail length), or ``z_mean``: per layer, each candidate's
mean norm z-scored across the N candidates, then averaged over layers.

The paper does not publish its rule [open]; the default is argmax of ``B/T``
("the most deliberate output"). :func:`select_l2_vote` is the ℓ2-weighted
answer vote.

This is post-hoc code (numpy, Python control flow), not a decode step.

Example:
    >>> import numpy as np
    >>> mk = lambda a, norms: CandidateSignals(text=a, answer=a, n_tokens=len(norms),
    ...     finished=True, band_norms=np.array(norms, dtype=float)[:, None])
    >>> cands = [mk("1", [1.0, 1.0]), mk("2", [1.0, 3.0])]
    >>> select_l2(cands, tau=np.array([2.0])).answer
    '2'
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from l2reason.errors import ConfigError

__all__ = [
    "DEFAULT_SCORE",
    "L2_METHODS",
    "LOGPROB_METHODS",
    "SCORE_NAMES",
    "CandidateSignals",
    "Selection",
    "group_vote",
    "l2_scores",
    "select_l2",
    "select_l2_vote",
]

SCORE_NAMES = ("A/T", "B/T", "C/T", "D/T", "z_mean")
DEFAULT_SCORE = "B/T"  # docs/techniques.md, "Statistics and scores": mean_l(B_l / T), argmax (our choice)
_NONNEGATIVE = ("A/T", "B/T", "C/T", "D/T")  # norms ≥ 0 ⇒ these scores are ≥ 0

#: Selector names grouped by what they need from a request (``SelectionSpec.method``): the ℓ2 selectors score
#: captured norms; the confidence selectors (``techniques/baselines.py``) score the candidates' logprobs. Here,
#: below both the request validator (``backends/validate.py``) and :mod:`l2reason.select`, which use them.
L2_METHODS = ("l2", "l2-vote")
LOGPROB_METHODS = ("self-certainty", "self-certainty-borda", "deepconf", "deepconf-tail")


@dataclass(frozen=True, eq=False)
class CandidateSignals:
    """Everything a selector may look at for one candidate.

    ``eq=False``: candidates compare by identity (they hold arrays).

    Args:
        text: the generated text.
        answer: the extracted final answer (by the caller), or None if none.
        n_tokens: generated tokens.
        finished: ended with EOS/stop (not truncated by the length limit).
        band_norms: [T, n_band] float decode-token norms at the band layers;
            NaN marks an excluded entry (massive activation, padding), as do
            tokens the caller removed.
        token_logprob: [T] chosen-token logprobs, or None.
        token_self_certainty: [T] per-token SC_t = −(1/V)·Σ_j log(V·p_j), or None.
        token_confidence: [T] DeepConf C_t = −mean(top-k logprobs), or None.

    Example:
        >>> import numpy as np
        >>> c = CandidateSignals("x", "1", 2, True, np.ones((2, 3)))
        >>> c.band_norms.shape
        (2, 3)
    """

    text: str
    answer: str | None
    n_tokens: int
    finished: bool
    band_norms: np.ndarray
    token_logprob: np.ndarray | None = None
    token_self_certainty: np.ndarray | None = None
    token_confidence: np.ndarray | None = None


@dataclass
class Selection:
    """The outcome of a selector.

    Args:
        method: selector name (e.g. ``"l2"``).
        index: chosen candidate's index.
        scores: one score per candidate (the selector's own scale; NaN where
            a candidate could not be scored).
        answer: the chosen candidate's answer.
        groups: answer -> group weight for voting selectors, else None.
        details: method-specific extras (score name, kept indices, ...).

    Example:
        >>> Selection("random", 0, [0.0], "1", None, {}).index
        0
    """

    method: str
    index: int
    scores: list[float]
    answer: str | None
    groups: dict[str, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _check_score(score: str) -> None:
    if score not in SCORE_NAMES:
        raise ConfigError(f"unknown score {score!r}; valid scores: {', '.join(SCORE_NAMES)}")


def _check_cands(cands: Sequence[CandidateSignals]) -> None:
    if len(cands) == 0:
        raise ConfigError("no candidates to select from: generate at least one (n >= 1)")


def _padded(cands: Sequence[CandidateSignals]) -> np.ndarray:
    """[N, T_max, n_band] float64, NaN-padded."""
    widths = {c.band_norms.shape[1] for c in cands if c.band_norms.ndim == 2}
    if len(widths) != 1 or any(c.band_norms.ndim != 2 for c in cands):
        raise ConfigError(
            "every candidate's band_norms must be [T, n_band] with the same n_band "
            f"(got shapes {[c.band_norms.shape for c in cands]})"
        )
    n_band = widths.pop()
    t_max = max(c.band_norms.shape[0] for c in cands)
    out = np.full((len(cands), t_max, n_band), np.nan)
    for i, c in enumerate(cands):
        out[i, : c.band_norms.shape[0]] = c.band_norms
    return out


def l2_scores(
    cands: Sequence[CandidateSignals],
    tau: np.ndarray | None,
    score: str = DEFAULT_SCORE,
) -> np.ndarray:
    """One ℓ2 score per candidate.

    Args:
        cands: N candidates.
        tau: [n_band] calibrated τ_l (needed for every score but ``z_mean``).
        score: one of :data:`SCORE_NAMES`.

    Returns:
        [N] float64. NaN for a candidate with no valid norm entry.
        ``z_mean``: per layer, each candidate's mean norm z-scored across the
        candidates that have one (population std; a layer whose std is 0
        contributes z = 0), then the mean over layers.

    Raises:
        ConfigError: unknown score, missing/mis-sized tau, ragged band widths.

    Example:
        >>> import numpy as np
        >>> c = CandidateSignals("", None, 2, True, np.array([[1.0], [3.0]]))
        >>> l2_scores([c], np.array([2.0]), "B/T").tolist()
        [0.5]
    """
    _check_score(score)
    _check_cands(cands)
    norms = _padded(cands)  # [N, T, n_band]
    valid = np.isfinite(norms)  # [N, T, n_band]
    has_any = valid.any(axis=(1, 2))  # [N]
    if score == "z_mean":
        cnt = valid.sum(axis=1)  # [N, n_band]
        tot = np.where(valid, norms, 0.0).sum(axis=1)
        mean = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)  # [N, n_band]
        with warnings.catch_warnings():  # all-NaN slices give NaN on purpose
            warnings.simplefilter("ignore", RuntimeWarning)
            mu = np.nanmean(mean, axis=0)  # [n_band]
            sd = np.sqrt(np.nanmean((mean - mu) ** 2, axis=0))  # [n_band] population std
            z = np.where(sd > 0, (mean - mu) / np.where(sd > 0, sd, 1.0), 0.0)  # std 0 ⇒ z 0
            z = np.where(np.isnan(mean), np.nan, z)  # [N, n_band]
            out = np.nanmean(z, axis=1)  # [N]
        return np.where(has_any, out, np.nan)

    from l2reason.signal.stats import abcd_stats, normalized_scores

    if tau is None:
        raise ConfigError(
            f"score {score!r} needs a calibrated tau per band layer: pass tau=[n_band] "
            "(a calibration's thresholds) or use score='z_mean'"
        )
    tau_arr = np.asarray(tau, dtype=np.float64).reshape(-1)
    if tau_arr.shape[0] != norms.shape[2]:
        raise ConfigError(f"tau has {tau_arr.shape[0]} values but band_norms has {norms.shape[2]} layers")
    stats = abcd_stats(torch.from_numpy(norms), torch.from_numpy(tau_arr), torch.from_numpy(valid))
    out = normalized_scores(stats)[score].numpy().astype(np.float64)  # [N]
    return np.where(has_any, out, np.nan)


def _argmax_tied(scores: np.ndarray, seed: int | None = None) -> tuple[int, int]:
    """(index of the largest score, how many candidates share it); NaN counts as -inf.

    Ties are broken neutrally but reproducibly: a uniform draw among the tied
    indices from ``numpy.random.default_rng(seed)`` (the selection's seed), so
    the pick depends only on the seed and the tied set. ``seed=None`` takes
    the lowest tied index.

    Example:
        >>> _argmax_tied(np.array([0.0, 2.0, 2.0, 1.0]), None)
        (1, 2)
    """
    s = np.where(np.isnan(scores), -np.inf, np.asarray(scores, dtype=np.float64))
    top = np.flatnonzero(s == s.max())
    if top.size == 1 or seed is None:
        return int(top[0]), int(top.size)
    return int(top[int(np.random.default_rng(seed).integers(top.size))]), int(top.size)


def _argmax(scores: np.ndarray, seed: int | None = None) -> int:
    """Index of the largest score; NaN counts as -inf; ties -> a seeded draw among the tied (``None``: lowest)."""
    return _argmax_tied(scores, seed)[0]


def group_vote(
    answers: Sequence[str | None],
    weights: Sequence[float],
    *,
    include: Sequence[bool] | None = None,
) -> tuple[str | None, dict[str, float]]:
    """Weighted answer vote with deterministic tie-breaking.

    Group weight = exact (``math.fsum``) sum of member weights. Candidates with
    answer None (or ``include`` False) do not vote. Ties: the group with the
    larger maximum member weight, then the group whose first member has the
    lowest index.

    Args:
        answers: N answers (None = no answer extracted).
        weights: N non-negative weights.
        include: N flags; None = all included.

    Returns:
        (winning answer, or None if nobody voted; {answer: weight}).

    Example:
        >>> group_vote(["a", "b", "b"], [3.0, 1.0, 2.0])
        ('a', {'a': 3.0, 'b': 3.0})
    """
    members: dict[str, list[int]] = {}
    for i, a in enumerate(answers):
        if a is not None and (include is None or include[i]):
            members.setdefault(a, []).append(i)
    groups = {a: math.fsum(weights[i] for i in idx) for a, idx in members.items()}
    if not groups:
        return None, {}
    best = max(
        members,
        key=lambda a: (groups[a], max(weights[i] for i in members[a]), -members[a][0]),
    )
    return best, groups


def select_l2(
    cands: Sequence[CandidateSignals],
    tau: np.ndarray | None,
    score: str = DEFAULT_SCORE,
    direction: str = "high",
    seed: int | None = 0,
) -> Selection:
    """Argmax of an ℓ2 score (ties -> a seeded draw among the tied; unscorable candidates last).

    Args:
        cands: N candidates.
        tau: [n_band] calibrated τ_l (unused by ``z_mean``).
        score: one of :data:`SCORE_NAMES` (default ``"B/T"``).
        direction: ``"high"`` picks the highest score (the paper's rule);
            ``"low"`` the lowest, for a model whose calibration showed the
            signal inverted. The returned scores are always "higher =
            preferred" (negated for ``"low"``).
        seed: the tie-break's seed: when several candidates share the best
            score (pooled-τ scores are often exactly 0), one of them is drawn
            with ``numpy.random.default_rng(seed)``; ``None`` takes the lowest
            index. ``details["n_tied"]`` says how many shared it.

    Returns:
        A :class:`Selection` with ``method="l2"``.

    Example:
        See the module docstring.
    """
    if direction not in ("high", "low"):
        raise ConfigError(f"direction must be 'high' or 'low', got {direction!r}")
    s = l2_scores(cands, tau, score)
    if direction == "low":
        s = -s
    i, tied = _argmax_tied(s, seed)
    return Selection(
        "l2", i, s.tolist(), cands[i].answer, None, {"score": score, "direction": direction, "n_tied": tied}
    )


def select_l2_vote(
    cands: Sequence[CandidateSignals],
    tau: np.ndarray | None,
    score: str = DEFAULT_SCORE,
    seed: int | None = 0,
) -> Selection:
    """ℓ2-weighted vote: group by answer, sum scores, return the heaviest group's best member.

    Weights: the score itself for the length-normalised sums (≥ 0 already);
    for ``z_mean`` (which can be negative) the score minus the minimum score
    among voters, so every weight is ≥ 0 (the lowest voter weighs 0).
    Unscorable candidates (NaN) weigh 0. Candidates with answer None do not
    vote unless every answer is None, in which case this is :func:`select_l2`.
    Ties between groups: larger maximum member score, then the group whose
    first member has the lowest index. Within the winning group: the member
    with the highest score (lowest index on ties).

    Args:
        cands: N candidates with extracted answers.
        tau: [n_band] calibrated τ_l (unused by ``z_mean``).
        score: one of :data:`SCORE_NAMES`.
        seed: the tie-break seed of the argmax fallback (no answers at all).

    Returns:
        A :class:`Selection` with ``method="l2-vote"`` and ``groups``.

    Example:
        >>> import numpy as np
        >>> mk = lambda a, x: CandidateSignals("", a, 1, True, np.array([[x]]))
        >>> cands = [mk("1", 5.0), mk("2", 3.0), mk("2", 3.0)]
        >>> select_l2_vote(cands, np.array([1.0])).answer      # 4 vs 2 + 2: tie, max 4 wins
        '1'
    """
    s = l2_scores(cands, tau, score)  # [N]
    voters = [c.answer is not None for c in cands]
    if not any(voters):
        sel = select_l2(cands, tau, score, seed=seed)
        return Selection(
            "l2-vote",
            sel.index,
            sel.scores,
            sel.answer,
            None,
            {"score": score, "fallback": "no answers"},
        )
    finite = np.where(np.isnan(s), -np.inf, s)
    w = np.where(np.isnan(s), 0.0, s)
    if score not in _NONNEGATIVE:
        voter_vals = [float(s[i]) for i in range(len(cands)) if voters[i] and not math.isnan(s[i])]
        shift = min(voter_vals) if voter_vals else 0.0
        w = np.where(np.isnan(s), 0.0, s - shift)
    answer, groups = group_vote([c.answer for c in cands], w.tolist())
    members = [i for i, c in enumerate(cands) if c.answer == answer]
    i = max(members, key=lambda k: (finite[k], -k))
    return Selection("l2-vote", i, s.tolist(), answer, groups, {"score": score})
