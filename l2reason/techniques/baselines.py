"""Baseline selectors every comparison includes, and the selector registry.

``docs/techniques.md``, "Selection rules and baselines": random pick, majority
vote (self-consistency), shortest candidate, self-certainty (Kang et al.
2025, arXiv 2502.18581) and DeepConf-style confidence (Fu et al. 2025,
"Deep Think with Confidence"). All return the same
:class:`~l2reason.techniques.selection.Selection` as the ℓ2 selectors, and
:func:`select` dispatches by name.

Post-hoc code (numpy, Python control flow), not a decode step.

Example:
    >>> import numpy as np
    >>> from l2reason.techniques.selection import CandidateSignals
    >>> mk = lambda a, t: CandidateSignals("", a, t, True, np.ones((t, 1)))
    >>> select("majority", [mk("1", 5), mk("2", 3), mk("2", 9)]).index
    1
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from l2reason.errors import ConfigError
from l2reason.techniques.probe import select_probe

# The per-candidate scores live below both the baselines and the probe (which imports neither); re-exported here.
from l2reason.techniques.scores import (
    DEEPCONF_BOTTOM,
    DEEPCONF_TAIL,
    DEEPCONF_WINDOW,
    deepconf_scores,
    self_certainty_scores,
)
from l2reason.techniques.selection import (
    DEFAULT_SCORE,
    CandidateSignals,
    Selection,
    _argmax_tied,
    _check_cands,
    group_vote,
    select_l2,
    select_l2_vote,
)

__all__ = [
    "SELECTORS",
    "deepconf_scores",
    "select",
    "select_deepconf",
    "select_majority",
    "select_random",
    "select_self_certainty",
    "select_shortest",
    "self_certainty_scores",
]

log = logging.getLogger(__name__)

BORDA_P = 0.5  # Kang et al. 2025, eq. 11: v(r) = (N − r + 1)^p; p tuned there [open]; p=0 ⇒ majority
DEEPCONF_KEEP = 0.9  # Fu et al. 2025: η = 90% ("DeepConf-high"); η = 10% is "-low"


def _vote_pick(
    cands: Sequence[CandidateSignals],
    weights: np.ndarray,
    rank: np.ndarray,
    include: Sequence[bool],
) -> tuple[int, dict[str, float] | None]:
    """Weighted answer vote; return the best-``rank`` member of the winning group.

    Falls back to argmax of ``rank`` over ``include`` when nobody has an answer.
    """
    answer, groups = group_vote([c.answer for c in cands], weights.tolist(), include=include)
    pool = [i for i in range(len(cands)) if include[i] and (answer is None or cands[i].answer == answer)]
    safe = np.where(np.isnan(rank), -np.inf, rank)
    best = max(pool, key=lambda i: (safe[i], -i))
    return best, (groups or None)


def select_random(cands: Sequence[CandidateSignals], seed: int = 0) -> Selection:
    """A uniformly random candidate (``numpy.random.default_rng(seed)``).

    Args:
        cands: N candidates.
        seed: RNG seed (same seed, same pick).

    Example:
        >>> import numpy as np
        >>> from l2reason.techniques.selection import CandidateSignals
        >>> c = [CandidateSignals("", None, 1, True, np.ones((1, 1)))] * 3
        >>> select_random(c, 0).index == select_random(c, 0).index
        True
    """
    _check_cands(cands)
    i = int(np.random.default_rng(seed).integers(len(cands)))
    return Selection("random", i, [0.0] * len(cands), cands[i].answer, None, {"seed": seed})


def select_majority(cands: Sequence[CandidateSignals], seed: int | None = None) -> Selection:
    """Self-consistency: the most common answer; returns its first candidate.

    Candidates with answer None do not vote. Ties between answers: with
    ``seed=None`` the answer that occurs first wins; with a seed, a uniformly
    random tied answer. If nobody has an answer: candidate 0 (or a random
    one with a seed).

    Args:
        cands: N candidates with extracted answers.
        seed: None for the deterministic tie-break, else the tie-break's seed.

    Example:
        >>> import numpy as np
        >>> from l2reason.techniques.selection import CandidateSignals
        >>> mk = lambda a: CandidateSignals("", a, 1, True, np.ones((1, 1)))
        >>> select_majority([mk("b"), mk("a"), mk("a"), mk("b")]).answer   # tie: "b" came first
        'b'
    """
    _check_cands(cands)
    rng = None if seed is None else np.random.default_rng(seed)
    counts: dict[str, int] = {}
    for c in cands:
        if c.answer is not None:
            counts[c.answer] = counts.get(c.answer, 0) + 1
    scores = [float(counts.get(c.answer, 0)) if c.answer is not None else 0.0 for c in cands]
    if not counts:
        i = 0 if rng is None else int(rng.integers(len(cands)))
        return Selection("majority", i, scores, cands[i].answer, None, {"fallback": "no answers"})
    top = max(counts.values())
    tied = [a for a in counts if counts[a] == top]  # in order of first occurrence
    answer = tied[0] if rng is None else tied[int(rng.integers(len(tied)))]
    i = next(k for k, c in enumerate(cands) if c.answer == answer)
    groups = {a: float(n) for a, n in counts.items()}
    return Selection("majority", i, scores, answer, groups, {"tied": tied})


def select_shortest(cands: Sequence[CandidateSignals], seed: int | None = None) -> Selection:
    """Fewest tokens among finished candidates (among all if none finished).

    Ties: a draw among the tied seeded with ``seed`` (``None``: the lowest
    index). Scores are −n_tokens.

    Example:
        >>> import numpy as np
        >>> from l2reason.techniques.selection import CandidateSignals
        >>> mk = lambda t, f: CandidateSignals("", None, t, f, np.ones((t, 1)))
        >>> select_shortest([mk(9, True), mk(3, False), mk(5, True)]).index
        2
    """
    _check_cands(cands)
    pool = [i for i, c in enumerate(cands) if c.finished] or list(range(len(cands)))
    key = np.array([-float(cands[k].n_tokens) if k in pool else -np.inf for k in range(len(cands))])
    i, tied = _argmax_tied(key, seed)
    scores = [-float(c.n_tokens) for c in cands]
    details = {"pool": "finished" if cands[pool[0]].finished else "all", "n_tied": tied}
    return Selection("shortest", i, scores, cands[i].answer, None, details)


def select_self_certainty(
    cands: Sequence[CandidateSignals],
    mode: Literal["argmax", "borda"] = "argmax",
    p: float = BORDA_P,
    seed: int | None = None,
) -> Selection:
    """Self-certainty (Kang et al. 2025): argmax of SC, or Borda vote.

    Borda (their eq. 11): rank candidates by SC, highest first (ties -> lower
    index first; unscorable last); rank r = 1..N gets (N − r + 1)^p votes for
    its answer; the answer with the most votes wins (ties as in
    :func:`~l2reason.techniques.selection.group_vote`), and its highest-SC
    candidate is returned. Candidates with answer None do not vote; if none
    has an answer, this is argmax.

    Args:
        cands: N candidates with ``token_self_certainty``.
        mode: ``"argmax"`` or ``"borda"``.
        p: Borda power (p = 0: majority vote).
        seed: argmax ties: a draw among the tied seeded with it (``None``: lowest index).

    Example:
        >>> import numpy as np
        >>> from l2reason.techniques.selection import CandidateSignals
        >>> mk = lambda a, sc: CandidateSignals("", a, 1, True, np.ones((1, 1)),
        ...                                     token_self_certainty=np.array([sc]))
        >>> select_self_certainty([mk("1", 0.1), mk("2", 0.9)]).answer
        '2'
    """
    sc = self_certainty_scores(cands)
    if mode == "argmax":
        i, tied = _argmax_tied(sc, seed)
        return Selection("self-certainty", i, sc.tolist(), cands[i].answer, None, {"n_tied": tied})
    if mode != "borda":
        raise ConfigError(f'mode must be "argmax" or "borda" (got {mode!r})')
    N = len(cands)
    order = sorted(range(N), key=lambda k: (-(sc[k] if not math.isnan(sc[k]) else -math.inf), k))
    votes = np.zeros(N)
    for r, k in enumerate(order, start=1):
        votes[k] = float(N - r + 1) ** p  # v(r) = (N − r + 1)^p
    i, groups = _vote_pick(cands, votes, sc, [True] * N)
    return Selection(
        "self-certainty-borda",
        i,
        sc.tolist(),
        cands[i].answer,
        groups,
        {"p": p, "votes": votes.tolist()},
    )


def select_deepconf(
    cands: Sequence[CandidateSignals],
    window: int = DEEPCONF_WINDOW,
    mode: Literal["lowest_group", "tail"] = "lowest_group",
    keep_frac: float = DEEPCONF_KEEP,
    tail_tokens: int = DEEPCONF_TAIL,
    bottom_frac: float = DEEPCONF_BOTTOM,
) -> Selection:
    """DeepConf (offline): score traces, keep the most confident, weighted vote.

    Keeps the top max(1, ceil(keep_frac · N)) candidates by score (ties ->
    lower index; unscorable last), then votes over their answers with the
    score as weight (C_t ≥ 0 since logprobs ≤ 0; negative weights are clipped
    to 0). Returns the winning group's most confident kept member. If no kept
    candidate has an answer: the most confident one.

    Args:
        cands: N candidates with ``token_confidence``.
        window: group size (tokens).
        mode: ``"lowest_group"`` or ``"tail"``.
        keep_frac: η, fraction kept before the vote, in (0, 1].
        tail_tokens: tail length for ``mode="tail"``.
        bottom_frac: fraction of lowest groups averaged.

    Example:
        >>> import numpy as np
        >>> from l2reason.techniques.selection import CandidateSignals
        >>> mk = lambda a, c: CandidateSignals("", a, 2, True, np.ones((2, 1)),
        ...                                    token_confidence=np.array([c, c]))
        >>> select_deepconf([mk("1", 5.0), mk("2", 1.0), mk("2", 1.0)], keep_frac=0.34).answer
        '1'
    """
    if not 0.0 < keep_frac <= 1.0:
        raise ConfigError(f"keep_frac must be in (0, 1] (got {keep_frac}); the paper uses 0.9 or 0.1")
    s = deepconf_scores(
        cands,
        window=window,
        mode=mode,
        bottom_frac=bottom_frac,
        tail_tokens=tail_tokens,
    )
    N = len(cands)
    n_keep = max(1, math.ceil(keep_frac * N - 1e-9))
    order = sorted(range(N), key=lambda k: (-(s[k] if not math.isnan(s[k]) else -math.inf), k))
    kept = sorted(order[:n_keep])
    include = [k in kept for k in range(N)]
    weights = np.clip(np.where(np.isnan(s), 0.0, s), 0.0, None)
    i, groups = _vote_pick(cands, weights, s, include)
    method = "deepconf" if mode == "lowest_group" else "deepconf-tail"
    details = {"kept": kept, "keep_frac": keep_frac, "window": window, "mode": mode}
    return Selection(method, i, s.tolist(), cands[i].answer, groups, details)


Selector = Callable[..., Selection]


def _l2(
    cands: Sequence[CandidateSignals],
    *,
    tau: Any,
    seed: int,
    score: str = DEFAULT_SCORE,
    direction: str = "high",
) -> Selection:
    return select_l2(cands, tau, score, direction, seed=seed)


def _l2_vote(
    cands: Sequence[CandidateSignals],
    *,
    tau: Any,
    seed: int,
    score: str = DEFAULT_SCORE,
) -> Selection:
    return select_l2_vote(cands, tau, score, seed=seed)


def _random(cands: Sequence[CandidateSignals], *, tau: Any, seed: int) -> Selection:
    return select_random(cands, seed)


def _majority(cands: Sequence[CandidateSignals], *, tau: Any, seed: int) -> Selection:
    return select_majority(cands)  # deterministic tie-break: `seed` drives only "random"


def _shortest(cands: Sequence[CandidateSignals], *, tau: Any, seed: int) -> Selection:
    return select_shortest(cands, seed=seed)


def _sc(cands: Sequence[CandidateSignals], *, tau: Any, seed: int) -> Selection:
    return select_self_certainty(cands, "argmax", seed=seed)


def _sc_borda(cands: Sequence[CandidateSignals], *, tau: Any, seed: int, p: float = BORDA_P) -> Selection:
    return select_self_certainty(cands, "borda", p)


def _deepconf(
    cands: Sequence[CandidateSignals],
    *,
    tau: Any,
    seed: int,
    window: int = DEEPCONF_WINDOW,
    keep_frac: float = DEEPCONF_KEEP,
    bottom_frac: float = DEEPCONF_BOTTOM,
) -> Selection:
    return select_deepconf(
        cands,
        window=window,
        mode="lowest_group",
        keep_frac=keep_frac,
        bottom_frac=bottom_frac,
    )


def _deepconf_tail(
    cands: Sequence[CandidateSignals],
    *,
    tau: Any,
    seed: int,
    tail_tokens: int = DEEPCONF_TAIL,
    keep_frac: float = DEEPCONF_KEEP,
) -> Selection:
    return select_deepconf(cands, mode="tail", keep_frac=keep_frac, tail_tokens=tail_tokens)


def _need_probe(method: str) -> ConfigError:
    return ConfigError(
        f"selection {method!r} needs a fitted probe: run `l2reason calibrate --select` (it stores one in the "
        "model's calibration file), or pass probe=..."
    )


def _probe(cands: Sequence[CandidateSignals], *, tau: Any, seed: int, probe: Any = None) -> Selection:
    if probe is None:
        raise _need_probe("l2-probe")
    return select_probe(cands, probe, rule="argmax", seed=seed)


def _probe_vote(cands: Sequence[CandidateSignals], *, tau: Any, seed: int, probe: Any = None) -> Selection:
    if probe is None:
        raise _need_probe("l2-probe-vote")
    return select_probe(cands, probe, rule="vote", seed=seed)


#: name -> selector ``(cands, *, tau, seed, **params) -> Selection``.
SELECTORS: dict[str, Selector] = {
    "random": _random,
    "majority": _majority,
    "shortest": _shortest,
    "self-certainty": _sc,
    "self-certainty-borda": _sc_borda,
    "deepconf": _deepconf,
    "deepconf-tail": _deepconf_tail,
    "l2": _l2,
    "l2-vote": _l2_vote,
    "l2-probe": _probe,
    "l2-probe-vote": _probe_vote,
}


def selector_params(method: str) -> list[str]:
    """The keyword parameters selector ``method`` takes besides ``cands``, ``tau`` and ``seed``.

    Example:
        >>> selector_params("deepconf")
        ['window', 'keep_frac', 'bottom_frac']
    """
    fn = SELECTORS.get(method)
    if fn is None:
        raise ConfigError(f"unknown selection method {method!r}; valid methods: {', '.join(SELECTORS)}")
    return [n for n in inspect.signature(fn).parameters if n not in ("cands", "tau", "seed")]


def select(
    method: str,
    cands: Sequence[CandidateSignals],
    *,
    tau: np.ndarray | None = None,
    seed: int = 0,
    **params: Any,
) -> Selection:
    """Run the selector ``method`` (a key of :data:`SELECTORS`).

    Args:
        method: ``random``, ``majority``, ``shortest``, ``self-certainty``,
            ``self-certainty-borda``, ``deepconf``, ``deepconf-tail``, ``l2``
            (argmax, ``score="B/T"`` by default), ``l2-vote``, or ``l2-probe`` /
            ``l2-probe-vote`` (these two need ``probe=``).
        cands: N candidates.
        tau: [n_band] calibrated τ_l (the ``l2`` methods).
        seed: seed of ``random`` and of the argmax rules' tie-break (a draw
            among the candidates that share the best score).
        **params: method parameters (``score``, ``p``, ``window``,
            ``keep_frac``, ``bottom_frac``, ``tail_tokens``, ``probe``).

    Raises:
        ConfigError: unknown method or parameter.

    Example:
        See the module docstring.
    """
    allowed = selector_params(method)  # ConfigError: an unknown method
    fn = SELECTORS[method]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"method {method!r} takes no parameter(s) {', '.join(unknown)}; "
            f"its parameters: {', '.join(allowed) or 'none'}"
        )
    sel = fn(cands, tau=tau, seed=seed, **params)
    log.debug("select %s -> candidate %d (answer %r)", method, sel.index, sel.answer)
    return sel
