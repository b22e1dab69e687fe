"""Baseline selectors and the registry, on hand-made candidates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from l2reason.errors import ConfigError
from l2reason.techniques.baselines import (
    SELECTORS,
    deepconf_scores,
    select,
    select_deepconf,
    select_majority,
    select_random,
    select_self_certainty,
    select_shortest,
)
from l2reason.techniques.selection import CandidateSignals


def cand(answer=None, n=3, finished=True, sc=None, conf=None, norm=1.0) -> CandidateSignals:
    return CandidateSignals(
        text="",
        answer=answer,
        n_tokens=n,
        finished=finished,
        band_norms=np.full((n, 1), norm),
        token_self_certainty=None if sc is None else np.asarray(sc, dtype=float),
        token_confidence=None if conf is None else np.asarray(conf, dtype=float),
    )


def test_random_is_seeded() -> None:
    cs = [cand(str(i)) for i in range(10)]
    picks = {select_random(cs, seed).index for seed in range(50)}
    assert len(picks) > 5
    assert select_random(cs, 7).index == select_random(cs, 7).index
    assert select_random(cs, 7).index == int(np.random.default_rng(7).integers(10))


def test_majority() -> None:
    sel = select_majority([cand("b"), cand("a"), cand("a"), cand(None), cand("b"), cand("a")])
    assert (sel.answer, sel.index) == ("a", 1)
    assert sel.groups == {"b": 2.0, "a": 3.0}
    tie = select_majority([cand(None), cand("b"), cand("a"), cand("a"), cand("b")])
    assert (tie.answer, tie.index) == ("b", 1)  # earliest first occurrence
    seeded = {select_majority([cand("b"), cand("a")], seed=s).answer for s in range(20)}
    assert seeded == {"a", "b"}
    assert select_majority([cand(None), cand(None)]).index == 0


def test_shortest() -> None:
    cs = [cand(n=9), cand(n=2, finished=False), cand(n=5), cand(n=5)]
    sel = select_shortest(cs)
    assert (sel.index, sel.details["pool"]) == (2, "finished")
    assert sel.scores == [-9.0, -2.0, -5.0, -5.0]
    none_done = [cand(n=9, finished=False), cand(n=4, finished=False)]
    assert select_shortest(none_done).details == {"pool": "all", "n_tied": 1}
    assert {select_shortest(cs, seed=s).index for s in range(30)} == {2, 3}  # tied lengths: a seeded draw
    assert select_shortest(none_done).index == 1


def test_self_certainty_argmax() -> None:
    cs = [cand("a", sc=[0.1, 0.3]), cand("b", sc=[0.9, np.nan]), cand("c", sc=[0.5])]
    sel = select_self_certainty(cs)
    assert (sel.method, sel.index) == ("self-certainty", 1)
    assert sel.scores == pytest.approx([0.2, 0.9, 0.5])


@pytest.mark.parametrize(("p", "answer", "index"), [(1.0, "a", 0), (0.5, "b", 1), (0.0, "b", 1)])
def test_self_certainty_borda(p: float, answer: str, index: int) -> None:
    # SC ranks: c0 (r=1), c1 (r=2), c2 (r=3); votes (N − r + 1)^p = 3^p, 2^p, 1
    # p=1: a 3 vs b 2+1 = 3, tie ⇒ larger max (a); p=0.5: a 1.73 < b 2.41; p=0: majority
    cs = [cand("a", sc=[0.9]), cand("b", sc=[0.5]), cand("b", sc=[0.1])]
    sel = select_self_certainty(cs, "borda", p=p)
    assert (sel.method, sel.answer, sel.index) == ("self-certainty-borda", answer, index)
    assert sel.details["votes"] == pytest.approx([3.0**p, 2.0**p, 1.0])


def test_self_certainty_needs_logprobs() -> None:
    with pytest.raises(ConfigError, match=r"candidate 1 has no token_self_certainty.*ask the backend"):
        select_self_certainty([cand(sc=[1.0]), cand()])
    with pytest.raises(ConfigError, match='mode must be "argmax" or "borda"'):
        select_self_certainty([cand(sc=[1.0])], "vote")  # type: ignore[arg-type]


def test_deepconf_scores() -> None:
    conf = [1.0, 1.0, 5.0, 5.0]
    c = [cand(conf=conf, n=4)]
    # window 2 ⇒ groups [1, 3, 5]; lowest ceil(0.1·3) = 1 group ⇒ 1
    assert deepconf_scores(c, window=2).tolist() == [1.0]
    # bottom_frac 0.5 ⇒ lowest 2 groups ⇒ 2
    assert deepconf_scores(c, window=2, bottom_frac=0.5).tolist() == [2.0]
    # window larger than T ⇒ one group = the whole trace
    assert deepconf_scores(c, window=100).tolist() == [3.0]
    assert deepconf_scores(c, mode="tail", tail_tokens=2).tolist() == [5.0]
    assert deepconf_scores(c, mode="tail", tail_tokens=99).tolist() == [3.0]
    assert math.isnan(deepconf_scores([cand(conf=[], n=0)])[0])


def test_deepconf_filter_then_weighted_vote() -> None:
    cs = [
        cand("a", conf=[5.0]),
        cand("b", conf=[1.0]),
        cand("b", conf=[1.5]),
        cand("b", conf=[1.2]),
        cand(None, conf=[9.0]),
    ]
    # keep all: a weighs 5.0 > b 1.0 + 1.5 + 1.2 = 3.7 (the answerless c4 does not vote)
    assert select_deepconf(cs, keep_frac=1.0).answer == "a"
    # keep top ceil(0.6·5) = 3 by score: c4 (9, no answer), c0 (5), c2 (1.5) ⇒ a 5 vs b 1.5
    sel = select_deepconf(cs, keep_frac=0.6)
    assert sel.details["kept"] == [0, 2, 4]
    assert (sel.answer, sel.index) == ("a", 0)
    # votes over kept candidates only: drop "a" by scoring it lowest
    cs2 = [cand("a", conf=[0.5]), cand("b", conf=[1.0]), cand("b", conf=[1.5])]
    sel2 = select_deepconf(cs2, keep_frac=0.9)  # keeps ceil(2.7) = 3
    assert (sel2.answer, sel2.index) == ("b", 2)
    sel3 = select_deepconf([cand("a", conf=[3.0]), cand("a", conf=[0.1]), cand("b", conf=[2.0])], keep_frac=0.34)
    # keeps ceil(0.34·3) = 2: c0 (3.0) and c2 (2.0); the low-confidence "a" (c1) is dropped
    assert (sel3.answer, sel3.index, sel3.details["kept"]) == ("a", 0, [0, 2])
    assert sel3.groups == {"a": 3.0, "b": 2.0}


def test_deepconf_needs_logprobs() -> None:
    with pytest.raises(ConfigError, match=r"no token_confidence.*ask the backend for logprobs"):
        select_deepconf([cand("a")])
    with pytest.raises(ConfigError, match=r"keep_frac must be in \(0, 1\]"):
        select_deepconf([cand("a", conf=[1.0])], keep_frac=0.0)


def test_registry() -> None:
    assert list(SELECTORS) == [
        "random", "majority", "shortest", "self-certainty", "self-certainty-borda",
        "deepconf", "deepconf-tail", "l2", "l2-vote", "l2-probe", "l2-probe-vote",
    ]  # fmt: skip
    cs = [
        cand("a", n=2, sc=[0.2], conf=[1.0], norm=1.0),
        cand("b", n=4, sc=[0.9], conf=[2.0, 2.0, 2.0, 2.0], norm=3.0),
        cand("b", n=3, sc=[0.4], conf=[0.5], norm=2.5),
    ]
    tau = np.array([2.0])
    got = {name: select(name, cs, tau=tau, seed=0).index for name in SELECTORS if not name.startswith("l2-probe")}
    with pytest.raises(ConfigError, match="'l2-probe' needs a fitted probe"):
        select("l2-probe", cs, tau=tau)
    assert got["majority"] == 1 and got["shortest"] == 0
    assert got["self-certainty"] == 1 and got["self-certainty-borda"] == 1
    assert got["deepconf"] == 1 and got["deepconf-tail"] == 1
    assert got["l2"] == 1 and got["l2-vote"] == 1
    assert select("l2", cs, tau=tau, score="z_mean").details == {"score": "z_mean", "direction": "high", "n_tied": 1}
    assert select("l2", cs, tau=tau, direction="low").index != got["l2"]
    assert select("deepconf-tail", cs, tail_tokens=1, keep_frac=1.0).method == "deepconf-tail"
    with pytest.raises(ConfigError, match="unknown selection method 'best'; valid methods: random, majority"):
        select("best", cs)
    with pytest.raises(ConfigError, match=r"method 'l2' takes no parameter\(s\) windo; its parameters: score"):
        select("l2", cs, tau=tau, windo=3)
    with pytest.raises(ConfigError, match="unknown score"):
        select("l2-vote", cs, tau=tau, score="F/T")
