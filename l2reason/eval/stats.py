"""Statistics for small evaluations, on scipy and scikit-learn where they do the job.

- :func:`bootstrap_ci` — percentile bootstrap CI of an accuracy
  (``scipy.stats.bootstrap``, resampling exactly as the published reports did).
- :func:`paired_bootstrap` — CI and two-sided p-value of an accuracy difference
  on the same items (the CI from ``scipy.stats.bootstrap``; the shifted-null
  p-value, which scipy does not offer, from its bootstrap distribution).
- :func:`mcnemar` — exact McNemar test on the discordant pairs (``scipy.stats.binomtest``).
- :func:`roc_auc` (``sklearn.metrics.roc_auc_score``), :func:`within_item_auc`
  (ours: the pooled pair count over items; ranks from ``scipy.stats.rankdata``)
  — how well a score separates right from wrong answers, overall and within each item.
- :func:`spearman` — rank correlation (``scipy.stats.spearmanr``).
- :func:`accuracy_vs_n` — accuracy of a selection rule as a function of the
  number of candidates ``N``, by subsampling stored candidates.

scipy and scikit-learn are imported inside the functions, so importing this
module (and ``l2reason``) stays cheap. The bootstraps draw exactly the
resamples of the hand-written code they replace, and every function gives the
published reports' numbers (``docs/results/``) to their printed precision
(``tests/unit/test_eval_stats.py`` recomputes rows from their stored
``per_item.csv``); McNemar p-values and AUCs differ from the old exact
arithmetic by float rounding (~1e-14) only.

References: Efron & Tibshirani (1993), *An Introduction to the Bootstrap*,
ch. 13 (percentile interval) and ch. 16 (shifted-null test); McNemar (1947);
Mann & Whitney (1947) for AUC as ``P(score+ > score-)``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from l2reason.errors import ConfigError

__all__ = [
    "accuracy_vs_n",
    "bootstrap_ci",
    "majority_selector",
    "max_score_selector",
    "mcnemar",
    "paired_bootstrap",
    "rankdata",
    "roc_auc",
    "spearman",
    "within_item_auc",
]

logger = logging.getLogger(__name__)

_CHUNK = 2_000_000  # resampled indices drawn at once; also fixes the draws the published reports used


def _as_1d(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as a non-empty 1-D float array of finite values."""
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError(f"{name} holds NaN or inf; drop or fill those entries first")
    return arr


def _check_level(level: float, n_boot: int) -> None:
    """Reject a confidence level outside (0, 1) or a non-positive ``n_boot``."""
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must be in (0, 1), e.g. 0.95; got {level}")
    if n_boot < 1:
        raise ConfigError(f"n_boot must be >= 1, got {n_boot}")


def _bootstrap_means(x: np.ndarray, n_boot: int, level: float, seed: int) -> tuple[np.ndarray, float, float]:
    """Means of ``n_boot`` resamples of ``x`` and their percentile interval, by ``scipy.stats.bootstrap``.

    Why the batch size is ours: scipy draws each batch of ``b`` resamples as
    one ``rng.integers(0, n, (b, n))`` from ``np.random.default_rng(seed)``, and
    with ``b = _CHUNK // n`` those are exactly the draws of the bootstrap
    l2reason wrote by hand before (a different batching changes the stream), so
    every published interval and p-value reproduces.

    Returns:
        ``(means [n_boot], lo, hi)``.
    """
    from scipy.stats import bootstrap

    if x.size == 1:  # scipy needs two observations; every resample of one is that one
        return np.full(n_boot, float(x[0])), float(x[0]), float(x[0])
    res = bootstrap(
        (x,),
        np.mean,
        n_resamples=n_boot,
        batch=max(1, _CHUNK // x.size),
        vectorized=True,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return np.asarray(res.bootstrap_distribution), float(ci.low), float(ci.high)


def bootstrap_ci(
    correct: ArrayLike, n_boot: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Accuracy and its percentile-bootstrap confidence interval.

    Args:
        correct: ``(n,)`` bools (or 0/1, or any per-item scores) for the items.
        n_boot: number of resamples.
        level: coverage of the interval.
        seed: seed of the resampling.

    Returns:
        ``(mean, lo, hi)``.

    Example:
        >>> mean, lo, hi = bootstrap_ci([1, 1, 0, 1, 0, 1, 1, 1, 0, 1], n_boot=2000)
        >>> mean, lo < mean < hi
        (0.7, True)
    """
    _check_level(level, n_boot)
    x = _as_1d(correct, "correct")
    _, lo, hi = _bootstrap_means(x, n_boot, level, seed)
    return float(x.mean()), lo, hi


def paired_bootstrap(
    a: ArrayLike, b: ArrayLike, n_boot: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float, float]:
    """Difference of two accuracies on the same items, with CI and p-value.

    Items are resampled as pairs. The two-sided p-value is the shifted-null
    bootstrap test (Efron & Tibshirani 1993, §16.4): the share of resampled
    differences ``d*`` with ``|d* - d| >= |d|``, as ``(k + 1) / (n_boot + 1)`` so
    it is never 0.

    Args:
        a: ``(n,)`` bools, system A's correctness per item.
        b: ``(n,)`` bools, system B's correctness on the same items.
        n_boot: number of resamples.
        level: coverage of the interval.
        seed: seed of the resampling.

    Returns:
        ``(mean(a) - mean(b), lo, hi, p_value)``.

    Example:
        >>> d, lo, hi, p = paired_bootstrap([1] * 35 + [0] * 5, [0] * 20 + [1] * 20, n_boot=2000)
        >>> round(d, 2), p < 0.05
        (0.38, True)
    """
    _check_level(level, n_boot)
    xa, xb = _as_1d(a, "a"), _as_1d(b, "b")
    if xa.shape != xb.shape:
        raise ConfigError(f"a and b must score the same items; got {xa.size} and {xb.size} entries")
    d = xa - xb
    diffs, lo, hi = _bootstrap_means(d, n_boot, level, seed)
    observed = float(d.mean())
    # A tiny slack keeps float noise in the resampled means from deciding ties.
    k = int(np.sum(np.abs(diffs - observed) >= abs(observed) - 1e-12))
    return observed, lo, hi, (k + 1) / (n_boot + 1)


def mcnemar(a: ArrayLike, b: ArrayLike) -> tuple[int, int, float]:
    """Exact McNemar test of two systems on the same items.

    Only discordant items count: ``b01`` (A wrong, B right) and ``b10`` (A right,
    B wrong). Under the null each is Binomial(b01 + b10, 1/2); the two-sided
    p-value (``scipy.stats.binomtest``) is ``min(1, 2 * P(X <= min(b01, b10)))``,
    1 when there are none.

    Args:
        a: ``(n,)`` bools, system A's correctness per item.
        b: ``(n,)`` bools, system B's correctness on the same items.

    Returns:
        ``(b01, b10, p_value)``.

    Example:
        >>> mcnemar([0] * 7 + [1], [1] * 7 + [0])  # Fagerland et al. (2013): p = 0.070
        (7, 1, 0.0703125)
    """
    xa = _as_1d(a, "a").astype(bool)
    xb = _as_1d(b, "b").astype(bool)
    if xa.shape != xb.shape:
        raise ConfigError(f"a and b must score the same items; got {xa.size} and {xb.size} entries")
    b01 = int(np.sum(~xa & xb))
    b10 = int(np.sum(xa & ~xb))
    n = b01 + b10
    if n == 0:
        return b01, b10, 1.0
    from scipy.stats import binomtest

    return b01, b10, min(1.0, float(binomtest(min(b01, b10), n, 0.5).pvalue))


def rankdata(x: ArrayLike) -> np.ndarray:
    """1-based ranks of ``x``, tied values sharing their average rank (``scipy.stats.rankdata``).

    Args:
        x: ``(n,)`` values.

    Example:
        >>> rankdata([10, 20, 20, 5]).tolist()
        [2.0, 3.5, 3.5, 1.0]
    """
    from scipy.stats import rankdata as _rankdata

    return np.asarray(_rankdata(np.asarray(x, dtype=float).ravel(), method="average"), dtype=float)


def _auc_pairs(scores: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """(wins, pairs): ``wins`` counts positive-over-negative pairs, ties as 1/2."""
    n1 = int(labels.sum())
    n0 = labels.size - n1
    if n1 == 0 or n0 == 0:
        return 0.0, 0
    ranks = rankdata(scores)
    u = ranks[labels].sum() - n1 * (n1 + 1) / 2.0  # Mann-Whitney U of the positives
    return float(u), n1 * n0


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve: ``P(score of a positive > score of a negative)``.

    ``sklearn.metrics.roc_auc_score``: ties count 1/2 (Mann-Whitney). ``NaN``
    when either class is empty (where scikit-learn raises).

    Args:
        scores: ``(n,)`` scores, higher meaning "more likely right".
        labels: ``(n,)`` bools, True for right answers.

    Example:
        >>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        0.75
    """
    s = _as_1d(scores, "scores")
    y = np.asarray(labels, dtype=bool).ravel()
    if y.shape != s.shape:
        raise ConfigError(f"scores and labels differ in length: {s.size} vs {y.size}")
    if y.all() or not y.any():
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def within_item_auc(scores: Sequence[ArrayLike], labels: Sequence[ArrayLike]) -> tuple[float, int]:
    """Pooled within-item AUC: ``P(score of a right candidate > score of a wrong one)``,
    both candidates of the same item.

    Only items with both right and wrong candidates contribute; every (right,
    wrong) pair counts once, ties 1/2. This is what matters for choosing among
    one item's candidates, unlike :func:`roc_auc`, which also rewards scores that
    merely tell easy items from hard ones.

    Ours, not a library's: no library pools the Mann-Whitney pair counts of
    many small groups (the mean of per-item AUCs would weight a 1×7 item like a
    4×4 one); each item's count is ``U`` from ``scipy.stats.rankdata`` ranks.

    Args:
        scores: one ``(k_i,)`` array of candidate scores per item.
        labels: one ``(k_i,)`` bool array per item (True = right).

    Returns:
        ``(auc, n_pairs)``; ``(nan, 0)`` when no item has both classes.

    Example:
        >>> within_item_auc([[0.9, 0.1], [0.2, 0.3, 0.3], [0.5]], [[1, 0], [1, 0, 0], [1]])
        (0.3333333333333333, 3)
    """
    if len(scores) != len(labels):
        raise ConfigError(f"scores and labels list {len(scores)} and {len(labels)} items")
    total_wins, total_pairs = 0.0, 0
    for i, (s, y) in enumerate(zip(scores, labels, strict=True)):
        s_arr = _as_1d(s, f"scores[{i}]")
        y_arr = np.asarray(y, dtype=bool).ravel()
        if y_arr.shape != s_arr.shape:
            raise ConfigError(f"item {i}: {s_arr.size} scores but {y_arr.size} labels")
        wins, pairs = _auc_pairs(s_arr, y_arr)
        total_wins += wins
        total_pairs += pairs
    return (total_wins / total_pairs if total_pairs else float("nan")), total_pairs


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``: Pearson correlation of average ranks).

    ``NaN`` when fewer than two points or either input is constant.

    Args:
        x: ``(n,)`` values.
        y: ``(n,)`` values.

    Example:
        >>> spearman([1, 2, 3, 4], [10, 100, 1000, 10000]), spearman([1, 2, 3], [3, 2, 1])
        (1.0, -1.0)
    """
    xa, ya = _as_1d(x, "x"), _as_1d(y, "y")
    if xa.shape != ya.shape:
        raise ConfigError(f"x and y differ in length: {xa.size} vs {ya.size}")
    if xa.size < 2 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return float("nan")  # scipy warns and returns NaN for constant input; say it without the warning
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(spearmanr(xa, ya).statistic)


Selector = Callable[[int, np.ndarray], bool]
"""``select(item_index, candidate_indices) -> bool``: is the answer the rule
picks from these candidates of this item right?"""


def accuracy_vs_n(
    select: Selector,
    n_candidates: Sequence[int],
    n_values: Sequence[int],
    n_subsamples: int = 100,
    seed: int = 0,
) -> dict[int, float]:
    """Accuracy as a function of the number of candidates ``N``, by subsampling.

    Sample ``K`` candidates per item once, store them, and this estimates what a
    selection rule (best score, majority vote, ...) would reach with only ``N <=
    K``: for each ``N`` and item it draws ``n_subsamples`` random subsets of size
    ``N`` (without replacement, in random order so ties break randomly) and
    averages ``select(item, subset)`` over subsets, then over items. For
    ``N = 1`` this is the mean single-sample accuracy.

    Args:
        select: ``select(item_index, candidate_indices) -> bool``; build one with
            :func:`max_score_selector` or :func:`majority_selector`.
        n_candidates: ``(n_items,)`` number of stored candidates per item.
        n_values: the ``N`` to evaluate; each must be in ``1 .. min(n_candidates)``.
        n_subsamples: subsets drawn per item and ``N``.
        seed: seed of the subsampling.

    Returns:
        ``{N: accuracy}``.

    Example:
        >>> correct = [[True, False, False, False], [True, True, True, True]]
        >>> scores = [[0.9, 0.1, 0.2, 0.3], [1.0, 1.0, 1.0, 1.0]]
        >>> curve = accuracy_vs_n(max_score_selector(scores, correct), [4, 4], [1, 4], 200)
        >>> round(curve[1], 1), curve[4]
        (0.6, 1.0)
    """
    if n_subsamples < 1:
        raise ConfigError(f"n_subsamples must be >= 1, got {n_subsamples}")
    if not n_candidates:
        raise ConfigError("n_candidates is empty: there are no items")
    smallest = min(n_candidates)
    bad = [n for n in n_values if not 1 <= n <= smallest]
    if bad:
        raise ConfigError(f"every N must be in 1..{smallest} (fewest stored candidates); got {bad}")
    rng = np.random.default_rng(seed)
    curve: dict[int, float] = {}
    for n in n_values:
        per_item = [
            np.mean([bool(select(i, rng.permutation(k)[:n])) for _ in range(n_subsamples)])
            for i, k in enumerate(n_candidates)
        ]
        curve[int(n)] = float(np.mean(per_item))
        logger.debug("accuracy at N=%d: %.4f", n, curve[int(n)])
    return curve


def max_score_selector(scores: Sequence[ArrayLike], correct: Sequence[ArrayLike]) -> Selector:
    """Best-of-N: pick the candidate with the highest score (first in subset order on ties).

    Args:
        scores: one ``(k_i,)`` array of candidate scores per item.
        correct: one ``(k_i,)`` bool array per item.

    Example:
        >>> pick = max_score_selector([[0.2, 0.7]], [[False, True]])
        >>> pick(0, np.array([0, 1])), pick(0, np.array([0]))
        (True, False)
    """
    s = [np.asarray(x, dtype=float) for x in scores]
    c = [np.asarray(x, dtype=bool) for x in correct]

    def select(i: int, idx: np.ndarray) -> bool:
        return bool(c[i][idx[int(np.argmax(s[i][idx]))]])

    return select


def majority_selector(answers: Sequence[Sequence[Any]], correct: Sequence[ArrayLike]) -> Selector:
    """Self-consistency: pick the most common answer (``None`` never votes).

    Ties go to the answer seen first in the subset's (random) order; a subset
    with only ``None`` answers counts as wrong.

    Args:
        answers: one list of hashable normalised answers per item.
        correct: one ``(k_i,)`` bool array per item (is candidate j right).

    Example:
        >>> pick = majority_selector([["4", "5", "4"]], [[True, False, True]])
        >>> pick(0, np.array([1, 0, 2])), pick(0, np.array([1]))
        (True, False)
    """
    c = [np.asarray(x, dtype=bool) for x in correct]

    def select(i: int, idx: np.ndarray) -> bool:
        counts: dict[Any, int] = {}
        first: dict[Any, int] = {}
        for j in idx:
            ans = answers[i][int(j)]
            if ans is not None:
                counts[ans] = counts.get(ans, 0) + 1
                first.setdefault(ans, int(j))
        if not counts:
            return False
        best = max(counts, key=lambda a: counts[a])  # dicts keep insertion order: first wins ties
        return bool(c[i][first[best]])

    return select
