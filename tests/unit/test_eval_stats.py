"""Statistics: known values on hand-made inputs, brute-force cross-checks, CI coverage, published figures."""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from l2reason.errors import ConfigError
from l2reason.eval.stats import (
    accuracy_vs_n,
    bootstrap_ci,
    majority_selector,
    max_score_selector,
    mcnemar,
    paired_bootstrap,
    rankdata,
    roc_auc,
    spearman,
    within_item_auc,
)

# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci_values() -> None:
    assert bootstrap_ci([True] * 10) == (1.0, 1.0, 1.0)
    assert bootstrap_ci([False] * 10) == (0.0, 0.0, 0.0)
    x = np.array([1] * 200 + [0] * 200, dtype=bool)
    mean, lo, hi = bootstrap_ci(x, n_boot=4000, seed=1)
    assert mean == 0.5
    # Normal approximation: 0.5 +- 1.96 * sqrt(0.25 / 400) = 0.5 +- 0.049.
    assert lo == pytest.approx(0.451, abs=0.01)
    assert hi == pytest.approx(0.549, abs=0.01)
    assert bootstrap_ci(x, n_boot=500, seed=3) == bootstrap_ci(x, n_boot=500, seed=3)


def test_bootstrap_ci_narrows_with_level() -> None:
    x = np.r_[np.ones(30), np.zeros(20)]
    _, lo90, hi90 = bootstrap_ci(x, n_boot=2000, level=0.9)
    _, lo99, hi99 = bootstrap_ci(x, n_boot=2000, level=0.99)
    assert lo99 < lo90 < 0.6 < hi90 < hi99


def test_bootstrap_ci_coverage_simulation() -> None:
    """A 95% CI on Bernoulli(0.6) samples of size 100 covers 0.6 in 92-98% of 300 runs."""
    rng = np.random.default_rng(12345)
    p, covered = 0.6, 0
    for rep in range(300):
        sample = rng.random(100) < p
        _, lo, hi = bootstrap_ci(sample, n_boot=1000, seed=rep)
        covered += lo <= p <= hi
    assert 0.92 <= covered / 300 <= 0.98


def test_paired_bootstrap_identities() -> None:
    a = np.array([1, 0, 1, 1, 0, 1, 0, 1], dtype=bool)
    assert paired_bootstrap(a, a, n_boot=500) == (0.0, 0.0, 0.0, 1.0)
    b = np.array([0, 0, 1, 0, 1, 1, 0, 0], dtype=bool)
    d, lo, hi, p = paired_bootstrap(a, b, n_boot=500, seed=4)
    d2, lo2, hi2, p2 = paired_bootstrap(b, a, n_boot=500, seed=4)
    assert d == pytest.approx(a.mean() - b.mean()) == pytest.approx(-d2)
    assert (lo, hi) == pytest.approx((-hi2, -lo2))  # same resamples, mirrored
    assert p == pytest.approx(p2)
    assert lo <= d <= hi


def test_paired_bootstrap_detects_a_clear_difference() -> None:
    a = np.ones(100, dtype=bool)
    b = np.r_[np.ones(50), np.zeros(50)].astype(bool)
    d, lo, hi, p = paired_bootstrap(a, b, n_boot=1000)
    assert d == 0.5
    assert 0.39 < lo < 0.5 < hi < 0.61
    assert p == pytest.approx(1 / 1001)


def test_paired_bootstrap_false_positive_rate() -> None:
    """Under the null (same accuracy, independent errors), p < 0.05 about 5% of the time."""
    rng = np.random.default_rng(7)
    rejections = 0
    for rep in range(200):
        a, b = rng.random(100) < 0.6, rng.random(100) < 0.6
        rejections += paired_bootstrap(a, b, n_boot=400, seed=rep)[3] < 0.05
    assert 0.01 <= rejections / 200 <= 0.10


# ---------------------------------------------------------------- McNemar


def _table(b01: int, b10: int, both: int = 5, neither: int = 3) -> tuple[list[int], list[int]]:
    """Per-item correctness of A and B with the given 2x2 table."""
    a = [0] * b01 + [1] * b10 + [1] * both + [0] * neither
    b = [1] * b01 + [0] * b10 + [1] * both + [0] * neither
    return a, b


def test_mcnemar_textbook_values() -> None:
    # Fagerland, Lydersen & Laake (2013), BMC Med Res Methodol 13:91, Table 1:
    # discordant 1 and 7, exact conditional p = 0.070.
    assert mcnemar(*_table(7, 1)) == (7, 1, pytest.approx(18 / 256))
    assert mcnemar(*_table(1, 9)) == (1, 9, pytest.approx(22 / 1024))
    assert mcnemar(*_table(0, 0)) == (0, 0, 1.0)
    assert mcnemar(*_table(5, 5)) == (5, 5, 1.0)  # 2 * P(X <= 5) > 1 is clipped
    assert mcnemar(*_table(0, 6))[2] == pytest.approx(2 / 64)


def test_mcnemar_symmetric_and_large_n() -> None:
    a, b = _table(150, 86)
    b01, b10, p = mcnemar(a, b)
    assert (b01, b10) == (150, 86)
    assert mcnemar(b, a) == (86, 150, p)
    # Cross-check with a float log-space binomial tail.
    n = 236
    log_terms = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2) for k in range(87)]
    assert p == pytest.approx(2 * sum(math.exp(t) for t in log_terms), rel=1e-9)
    assert 2e-5 < p < 8e-5  # continuity-corrected chi-square gives 4.1e-5


# ---------------------------------------------------------------- AUC, ranks


def _brute_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels], scores[~labels]
    wins = sum((p > q) + 0.5 * (p == q) for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_known_values() -> None:
    assert roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert roc_auc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([5, 5, 5, 5], [0, 1, 0, 1]) == 0.5
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert math.isnan(roc_auc([1, 2, 3], [1, 1, 1]))
    assert math.isnan(roc_auc([1, 2, 3], [0, 0, 0]))


def test_roc_auc_matches_brute_force_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    labels = rng.random(60) < 0.4
    assert roc_auc(scores, labels) == pytest.approx(_brute_auc(scores, labels), abs=1e-12)


def test_within_item_auc() -> None:
    assert within_item_auc([[0.9, 0.1], [0.2, 0.3, 0.3], [0.5]], [[1, 0], [1, 0, 0], [1]]) == (1 / 3, 3)
    auc, n = within_item_auc([[1.0, 1.0]], [[1, 1]])
    assert math.isnan(auc) and n == 0
    # Scores that rank right above wrong inside each item but are shifted per
    # item (an easy item scores high overall): within-item 1, pooled AUC < 1.
    scores = [np.array([10.0, 9.0]), np.array([1.0, 0.0])]
    labels = [np.array([True, False]), np.array([True, False])]
    assert within_item_auc(scores, labels) == (1.0, 2)
    assert roc_auc(np.concatenate(scores), np.concatenate(labels)) == 0.75


def test_within_item_auc_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    scores = [rng.integers(0, 4, k).astype(float) for k in (3, 5, 8, 4)]
    labels = [rng.random(k) < 0.5 for k in (3, 5, 8, 4)]
    wins = pairs = 0.0
    for s, y in zip(scores, labels, strict=True):
        if y.any() and (~y).any():
            wins += _brute_auc(s, y) * y.sum() * (~y).sum()
            pairs += y.sum() * (~y).sum()
    auc, n = within_item_auc(scores, labels)
    assert n == pairs and auc == pytest.approx(wins / pairs)


def test_rankdata_and_spearman() -> None:
    assert rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4, 5], [1, 8, 27, 64, 125]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6*4/(5*24)
    # With ties: Pearson correlation of the average ranks.
    x, y = [1, 2, 2, 3, 4], [1, 3, 2, 2, 5]
    expected = np.corrcoef(rankdata(x), rankdata(y))[0, 1]
    assert spearman(x, y) == pytest.approx(expected)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1], [2]))


# ---------------------------------------------------------------- accuracy vs N


def test_accuracy_vs_n_max_score() -> None:
    correct = [[True, False, False, False], [True, True, True, True], [False] * 4]
    scores = [[0.9, 0.1, 0.2, 0.3], [1.0, 1.0, 1.0, 1.0], [0.5, 0.4, 0.3, 0.2]]
    curve = accuracy_vs_n(max_score_selector(scores, correct), [4, 4, 4], [1, 2, 4], n_subsamples=400)
    # N=1: mean single-sample accuracy (1/4 + 1 + 0) / 3; N=2: the right one is
    # in the pair half the time; N=4: always found.
    assert curve[1] == pytest.approx((0.25 + 1) / 3, abs=0.03)
    assert curve[2] == pytest.approx((0.5 + 1) / 3, abs=0.03)
    assert curve[4] == pytest.approx(2 / 3)
    again = accuracy_vs_n(max_score_selector(scores, correct), [4, 4, 4], [1, 2, 4], n_subsamples=400)
    assert again == curve  # seeded


def test_accuracy_vs_n_majority_vote() -> None:
    answers = [["7", "7", "7", "3", "3"]]
    correct = [[True, True, True, False, False]]
    curve = accuracy_vs_n(majority_selector(answers, correct), [5], [1, 5], n_subsamples=300, seed=2)
    assert curve[1] == pytest.approx(0.6, abs=0.06)
    assert curve[5] == 1.0
    assert majority_selector([[None, None]], [[False, False]])(0, np.array([0, 1])) is False


def test_accuracy_vs_n_rejects_bad_n() -> None:
    pick = max_score_selector([[0.1, 0.2]], [[True, False]])
    with pytest.raises(ConfigError, match=r"1\.\.2"):
        accuracy_vs_n(pick, [2], [3])
    with pytest.raises(ConfigError, match=r"1\.\.2"):
        accuracy_vs_n(pick, [2], [0])


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bootstrap_ci([]), "non-empty"),
        (lambda: bootstrap_ci([1, 0], level=1.5), "level"),
        (lambda: bootstrap_ci([1, 0], n_boot=0), "n_boot"),
        (lambda: paired_bootstrap([1, 0], [1]), "same items"),
        (lambda: mcnemar([1, 0], [1, 0, 1]), "same items"),
        (lambda: roc_auc([0.1, float("nan")], [0, 1]), "NaN"),
        (lambda: roc_auc([0.1, 0.2], [0, 1, 1]), "length"),
        (lambda: within_item_auc([[0.1]], []), "items"),
        (lambda: spearman([1, 2], [1, 2, 3]), "length"),
    ],
)
def test_bad_inputs_raise_config_error(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()


# ---------------------------------------------------------------- published figures

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def _published(run: str) -> tuple[dict[str, int], Callable[[str], dict[str, float]], list[str]]:
    """A published run: each report row's position (the report seeds row i's bootstrap with i),
    its per-item 0/1 column (``per_item.csv``; blank where the row skipped the item) and ``report.md``'s lines."""
    order = {m["name"]: i for i, m in enumerate(json.loads((RESULTS / run / "report.json").read_text())["methods"])}
    with (RESULTS / run / "per_item.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))

    def correct(name: str) -> dict[str, float]:
        return {r["item_id"]: float(r[name]) for r in rows if r[name] != ""}

    return order, correct, (RESULTS / run / "report.md").read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize(
    ("run", "method"),
    [
        ("gsm_symbolic_100_1.5b_vllm", "l2-probe-cv:l2"),  # 67.0 [58.0, 76.0]; vs majority +2.0 [+0.0, +5.0]
        ("gsm_symbolic_100_1.5b_vllm", "majority"),
        ("gsm_symbolic_100", "l2:B/T"),
    ],
)
def test_published_report_rows_reproduce_from_their_stored_per_item_data(run: str, method: str) -> None:
    """The accuracy CI, paired-bootstrap Δ/CI/p and McNemar counts/p of a published row, to its printed precision."""
    order, correct, lines = _published(run)
    [line] = [ln for ln in lines if ln.startswith(f"| {method} | selection |")]
    i, a = order[method], correct(method)
    acc, lo, hi = bootstrap_ci(list(a.values()), n_boot=10_000, seed=i)  # report: seed + i, seed 0
    assert line.startswith(f"| {method} | selection | {len(a)} | {100 * acc:.1f} | [{100 * lo:.1f}, {100 * hi:.1f}] |")
    for ref, offset in (("greedy", 1000), ("majority", 2000)):
        if ref == method:
            continue
        b = correct(ref)
        x, y = np.array([a[k] for k in a if k in b]), np.array([b[k] for k in a if k in b])  # the shared items
        d, dlo, dhi, p = paired_bootstrap(x, y, n_boot=10_000, seed=offset + i)
        losses, wins, p_mcnemar = mcnemar(x, y)
        star = " **" if (dlo > 0 or dhi < 0) else ""
        cell = f"{100 * d:+.1f} [{100 * dlo:+.1f}, {100 * dhi:+.1f}]{star} p={p:.3f}; +{wins}/−{losses} (McN p={p_mcnemar:.3f})"
        assert f"| {cell} |" in line, (ref, cell, line)


def test_scipy_bootstrap_keeps_the_hand_written_draws() -> None:
    """Values of the hand-written bootstrap this module had (chunked draws at n > 200 too), to 1e-12."""
    rng = np.random.default_rng(123)
    x = (rng.uniform(size=450) < 0.6).astype(float)
    y = (rng.uniform(size=450) < 0.5).astype(float)
    assert bootstrap_ci(x, n_boot=3000, seed=5) == pytest.approx(
        (0.6066666666666667, 0.56, 0.6488888888888888), abs=1e-12
    )
    assert bootstrap_ci(x[:100], n_boot=3000, seed=5) == pytest.approx((0.64, 0.55, 0.74), abs=1e-12)
    got = paired_bootstrap(x, y, n_boot=3000, seed=6)
    assert got == pytest.approx(
        (0.10444444444444445, 0.042222222222222223, 0.1688888888888889, 0.0013328890369876708), abs=1e-12
    )
    assert bootstrap_ci([1.0], n_boot=50) == (1.0, 1.0, 1.0)
    assert paired_bootstrap([1.0], [0.0], n_boot=50) == (1.0, 1.0, 1.0, 1 / 51)
