"""Per-candidate confidence scores: self-certainty and DeepConf trace confidence.

``docs/techniques.md``, "Selection rules and baselines". The baselines
(:mod:`l2reason.techniques.baselines`) select with these scores and the
learned probe (:mod:`l2reason.techniques.probe`) reads them as features; they
live here, below both, so neither imports the other for them.

Post-hoc numpy over the per-token signals of
:class:`~l2reason.techniques.selection.CandidateSignals`, not a decode step.
Non-finite per-token values are dropped; a candidate with no token left
scores NaN.

Example:
    >>> import numpy as np
    >>> from l2reason.techniques.selection import CandidateSignals
    >>> c = CandidateSignals("", "1", 4, True, np.ones((4, 1)), token_confidence=np.array([1.0, 2.0, 3.0, 4.0]))
    >>> deepconf_scores([c], window=2).tolist()  # window means 1.5, 2.5, 3.5; the lowest one
    [1.5]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from l2reason.errors import ConfigError
from l2reason.techniques.selection import CandidateSignals, _check_cands

__all__ = [
    "DEEPCONF_BOTTOM",
    "DEEPCONF_TAIL",
    "DEEPCONF_WINDOW",
    "deepconf_scores",
    "self_certainty_scores",
    "window_low",
]

DEEPCONF_WINDOW = 2048  # Fu et al. 2025: sliding-window group size 2048 tokens
DEEPCONF_BOTTOM = 0.10  # Fu et al. 2025: bottom-10% group confidence
DEEPCONF_TAIL = 2048  # Fu et al. 2025: tail confidence over the last 2048 tokens


def self_certainty_scores(cands: Sequence[CandidateSignals]) -> np.ndarray:
    """SC = mean over tokens of SC_t (NaN tokens ignored; NaN if none).

    Raises:
        ConfigError: a candidate lacks ``token_self_certainty``.
    """
    _check_cands(cands)
    out = np.full(len(cands), np.nan)
    for i, c in enumerate(cands):
        v = _finite_tokens(c.token_self_certainty, i, "token_self_certainty", _NEED_SC)
        if v.size:
            out[i] = v.mean()
    return out


_NEED_SC = "self-certainty needs the full next-token distribution; ask the backend for logprobs/self-certainty"
_NEED_CONF = "DeepConf needs the top-k logprobs of every generated token; ask the backend for logprobs"


def _finite_tokens(values: np.ndarray | None, i: int, name: str, need: str) -> np.ndarray:
    """Candidate ``i``'s per-token ``values`` without the non-finite ones; ``ConfigError`` (saying what ``need``-s
    them) when it has none."""
    if values is None:
        raise ConfigError(f"candidate {i} has no {name}: {need}")
    v = np.asarray(values, dtype=np.float64)
    return v[np.isfinite(v)]


def window_low(conf: np.ndarray, window: int, bottom: float = DEEPCONF_BOTTOM) -> float:
    """Mean of the lowest ``ceil(bottom · groups)`` sliding-window means of ``conf`` (NaN if empty).

    Groups are the means of every window of ``w = min(window, T)`` consecutive
    values (``T − w + 1`` of them), at least one is kept.

    Args:
        conf: ``[T]`` finite per-token confidences C_t.
        window: the window length in tokens.
        bottom: the share of lowest groups averaged.

    Example:
        >>> window_low(np.array([1.0, 2.0, 3.0, 4.0]), 2, bottom=0.5)  # means 1.5, 2.5, 3.5 -> lowest 2
        2.0
    """
    T = conf.size
    if T == 0:
        return float("nan")
    w = min(window, T)
    csum = np.concatenate([[0.0], np.cumsum(conf)])
    groups = (csum[w:] - csum[:-w]) / w  # [T − w + 1] window means
    k = max(1, math.ceil(bottom * groups.size))
    return float(np.sort(groups)[:k].mean())


def deepconf_scores(
    cands: Sequence[CandidateSignals],
    *,
    window: int = DEEPCONF_WINDOW,
    mode: Literal["lowest_group", "tail"] = "lowest_group",
    bottom_frac: float = DEEPCONF_BOTTOM,
    tail_tokens: int = DEEPCONF_TAIL,
) -> np.ndarray:
    """DeepConf trace confidence per candidate.

    ``lowest_group``: group confidences are sliding-window means of C_t over
    windows of w = min(window, T) tokens (T − w + 1 groups); the score is the
    mean of the lowest ceil(bottom_frac · groups) of them (:func:`window_low`).
    ``tail``: mean C_t over the last min(tail_tokens, T) tokens. Non-finite
    C_t are dropped first; a candidate with no token scores NaN.

    Raises:
        ConfigError: a candidate lacks ``token_confidence``, or bad window sizes.
    """
    _check_cands(cands)
    if window < 1 or tail_tokens < 1:
        raise ConfigError(f"window and tail_tokens must be >= 1 (got {window}, {tail_tokens})")
    if not 0.0 < bottom_frac <= 1.0:
        raise ConfigError(f"bottom_frac must be in (0, 1] (got {bottom_frac})")
    out = np.full(len(cands), np.nan)
    for i, c in enumerate(cands):
        conf = _finite_tokens(c.token_confidence, i, "token_confidence", _NEED_CONF)  # [T]
        T = conf.size
        if T == 0:
            continue
        if mode == "tail":
            out[i] = conf[-min(tail_tokens, T) :].mean()
        elif mode == "lowest_group":
            out[i] = window_low(conf, window, bottom_frac)
        else:
            raise ConfigError(f'mode must be "lowest_group" or "tail" (got {mode!r})')
    return out
