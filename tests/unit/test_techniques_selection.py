"""ℓ2 selection rules on hand-made norm arrays with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from l2reason.errors import ConfigError
from l2reason.techniques.selection import (
    SCORE_NAMES,
    CandidateSignals,
    _argmax_tied,
    group_vote,
    l2_scores,
    select_l2,
    select_l2_vote,
)

NAN = math.nan
TAU = np.array([2.0])


def cand(norms, answer: str | None = None) -> CandidateSignals:
    arr = np.asarray(norms, dtype=float)
    arr = arr[:, None] if arr.ndim == 1 else arr
    return CandidateSignals(text="", answer=answer, n_tokens=len(arr), finished=True, band_norms=arr)


# one layer, τ = 2:
#   c0 [1,1,1,1]                 A/T 1.0  B/T 0    C/T 0    D/T 0 (tail: last 1 token)
#   c1 [3,3]                     A/T 3.0  B/T 1    C/T 1    D/T 0 (tail: floor(0.6) = 0 tokens)
#   c2 [5,1,1,1,1,1,1,1,1,4]     A/T 1.7  B/T 0.5  C/T 0.2  D/T 2/3 (tail: [1,1,4])
CANDS = [cand([1, 1, 1, 1]), cand([3, 3]), cand([5, 1, 1, 1, 1, 1, 1, 1, 1, 4])]


@pytest.mark.parametrize(
    ("score", "expected", "best"),
    [
        ("A/T", [1.0, 3.0, 1.7], 1),
        ("B/T", [0.0, 1.0, 0.5], 1),
        ("C/T", [0.0, 1.0, 0.2], 1),
        ("D/T", [0.0, 0.0, 2 / 3], 2),
    ],
)
def test_abcd_scores(score: str, expected: list[float], best: int) -> None:
    assert l2_scores(CANDS, TAU, score).tolist() == pytest.approx(expected, abs=1e-6)
    sel = select_l2(CANDS, TAU, score)
    assert (sel.method, sel.index, sel.details) == ("l2", best, {"score": score, "direction": "high", "n_tied": 1})
    low = select_l2(CANDS, TAU, score, direction="low")
    lowest = np.flatnonzero(np.isclose(expected, min(expected)))  # D/T: candidates 0 and 1 tie at 0
    assert low.index in lowest and low.details["n_tied"] == lowest.size
    assert low.scores == pytest.approx([-x for x in expected], abs=1e-6)
    with pytest.raises(ConfigError, match="direction must be 'high' or 'low'"):
        select_l2(CANDS, TAU, score, direction="up")


def test_z_mean() -> None:
    # mean norms [1, 3, 1.7]: μ = 1.9, population σ = sqrt(0.68 / 1)...
    means = np.array([1.0, 3.0, 1.7])
    z = (means - means.mean()) / means.std()
    assert l2_scores(CANDS, None, "z_mean").tolist() == pytest.approx(z.tolist())
    # a layer on which all candidates agree contributes z = 0 (no division by 0)
    two = [cand([[1.0, 5.0]]), cand([[3.0, 5.0]])]
    assert l2_scores(two, None, "z_mean").tolist() == pytest.approx([-0.5, 0.5])


def test_nan_entries_are_excluded() -> None:
    c = cand([[3.0, NAN], [NAN, 5.0]])  # layer 0: one token (3), layer 1: one token (5)
    assert l2_scores([c], np.array([2.0, 2.0]), "B/T").tolist() == pytest.approx([(1.0 + 3.0) / 2])
    empty = cand([[NAN], [NAN]])
    s = l2_scores([empty, cand([1.0])], TAU, "B/T")
    assert math.isnan(s[0]) and s[1] == 0.0
    assert select_l2([empty, cand([1.0])], TAU).index == 1  # unscorable ranks last
    assert math.isnan(l2_scores([empty, cand([1.0])], None, "z_mean")[0])


def test_ties_are_broken_among_the_tied_only_and_reproducibly_for_a_seed() -> None:
    # B/T with τ = 2: 0, 1, 1, 0, 1 -> candidates 1, 2 and 4 share the best score
    cs = [cand([1.0]), cand([3.0]), cand([3.0]), cand([2.0]), cand([3.0])]
    picks = {seed: select_l2(cs, TAU, seed=seed).index for seed in range(40)}
    assert set(picks.values()) == {1, 2, 4}  # only the tied, and each of them for some seed
    assert all(select_l2(cs, TAU, seed=seed).index == i for seed, i in picks.items())  # same seed, same pick
    assert select_l2(cs, TAU, seed=3).details["n_tied"] == 3
    assert select_l2(cs, TAU, seed=None).index == 1  # no seed: the lowest tied index
    assert select_l2([cand([1.0]), cand([3.0])], TAU, seed=5).details["n_tied"] == 1
    # the tie-break does not depend on the candidates' order beyond the tied set
    assert _argmax_tied(np.array([0.0, 1.0, 1.0]), 11) == _argmax_tied(np.array([0.0, 1.0, 1.0]), 11)
    assert _argmax_tied(np.array([np.nan, np.nan]), None) == (0, 2)  # all unscorable: all tied


def test_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown score 'E/T'; valid scores: A/T, B/T, C/T, D/T, z_mean"):
        l2_scores(CANDS, TAU, "E/T")
    with pytest.raises(ConfigError, match="needs a calibrated tau per band layer"):
        l2_scores(CANDS, None, "B/T")
    with pytest.raises(ConfigError, match="tau has 2 values but band_norms has 1 layers"):
        l2_scores(CANDS, np.array([1.0, 2.0]), "B/T")
    with pytest.raises(ConfigError, match="same n_band"):
        l2_scores([cand([[1.0, 2.0]]), cand([1.0])], TAU, "B/T")
    with pytest.raises(ConfigError, match="no candidates"):
        select_l2([], TAU)
    assert SCORE_NAMES == ("A/T", "B/T", "C/T", "D/T", "z_mean")


def _voters(scores: list[float], answers: list[str | None]) -> list[CandidateSignals]:
    # one token each with τ = 1: B/T = norm − 1 = the score
    return [cand([s + 1.0], a) for s, a in zip(scores, answers, strict=True)]


def test_vote_sums_scores_per_answer() -> None:
    sel = select_l2_vote(_voters([4, 3, 3], ["a", "b", "b"]), np.array([1.0]))
    assert (sel.answer, sel.index) == ("b", 1)
    assert sel.groups == pytest.approx({"a": 4.0, "b": 6.0})
    assert sel.method == "l2-vote"


def test_vote_tie_breaks() -> None:
    # equal sums (4 vs 4): the larger maximum score (4 > 2) wins
    assert select_l2_vote(_voters([4, 2, 2], ["a", "b", "b"]), np.array([1.0])).answer == "a"
    # equal sums and maxima: the group whose first member comes first; its best member
    sel = select_l2_vote(_voters([1, 3, 1, 3], ["x", "y", "y", "x"]), np.array([1.0]))
    assert (sel.answer, sel.index) == ("x", 3)


def test_vote_ignores_missing_answers_unless_all_missing() -> None:
    sel = select_l2_vote(_voters([10, 1, 2], [None, "a", "b"]), np.array([1.0]))
    assert (sel.answer, sel.index) == ("b", 2)
    sel = select_l2_vote(_voters([1, 10, 2], [None, None, None]), np.array([1.0]))
    assert (sel.answer, sel.index, sel.groups) == (None, 1, None)


def test_vote_shifts_negative_scores() -> None:
    # mean norms [2, 2, 2, 2.5, 1] ⇒ z ≈ [0.20, 0.20, 0.20, 1.22, -1.84]; raw sums would pick
    # "b" (1.22 > 0.61); shifted by the minimum, "a" weighs 3·2.04 > "b" 3.06
    cands = [cand([m], a) for m, a in zip([2, 2, 2, 2.5, 1], "aaabc", strict=True)]
    sel = select_l2_vote(cands, None, "z_mean")
    assert (sel.answer, sel.index) == ("a", 0)
    assert sel.groups["c"] == 0.0


def test_group_vote() -> None:
    assert group_vote([], []) == (None, {})
    assert group_vote([None, "a"], [5.0, 1.0]) == ("a", {"a": 1.0})
    assert group_vote(["a", "b"], [1.0, 2.0], include=[True, False]) == ("a", {"a": 1.0})
