"""Fitting the ``l2-probe`` on stored samples, and cross-fitting it for the report.

The probe itself (features, logistic regression, selection) is pure numpy in
:mod:`l2reason.techniques.probe`; this module feeds it the evaluation's stored
items (every captured layer, the stored answers and labels) and keeps the
discipline of ``l2-auto``:

- :func:`fit_on_items` fits one probe on a labelled calibration split
  (``l2reason calibrate --select`` stores it in the model's calibration file,
  with the split's item ids, and the report scores ``l2-probe`` only on
  items outside that split);
- :func:`cross_fit` is the report's ``l2-probe-cv``: the items are split by
  index parity, a probe fitted on one half scores only the other half and the
  reverse, so every item is scored exactly once by a probe that never saw it.

Example:
    >>> from l2reason.eval.probe import cross_fit
    >>> cf = cross_fit(run.samples, "both")  # doctest: +SKIP
    >>> cf.scores["gsm_symbolic:3"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from l2reason.errors import ConfigError
from l2reason.eval.harness import StoredItem
from l2reason.techniques.probe import Probe, fit_probe
from l2reason.techniques.selection import CandidateSignals

__all__ = ["CrossFit", "Fold", "ItemInputs", "cross_fit", "fit_on_items", "item_inputs", "paired_auc_bootstrap"]


@dataclass
class ItemInputs:
    """One stored item as the probe sees it: candidates over all captured layers, their layers, labels."""

    item_id: str
    index: int
    cands: list[CandidateSignals]
    layers: list[int]
    labels: np.ndarray


def item_inputs(item: StoredItem) -> ItemInputs:
    """The probe's inputs of a stored item (every captured layer; the stored answers)."""
    from l2reason.select import candidate_signals

    c0 = next((c for c in item.result.candidates if c.norms is not None), None)
    layers = list(c0.norms.layers) if c0 is not None and c0.norms is not None else []
    table = {c.text: a for c, a in zip(item.result.candidates, item.answers, strict=True)}
    cands, used = candidate_signals(item.result, layers=layers, extractor=lambda t: table.get(t))
    return ItemInputs(item.item_id, item.index, cands, used, np.asarray(item.correct, dtype=bool))


def _inputs(samples: Sequence[StoredItem | ItemInputs]) -> list[ItemInputs]:
    return [s if isinstance(s, ItemInputs) else item_inputs(s) for s in samples]


def _common_layers(items: Sequence[ItemInputs]) -> list[int]:
    if not items:
        return []
    common = set(items[0].layers)
    for it in items[1:]:
        common &= set(it.layers)
    return sorted(common)


def _restrict(it: ItemInputs, layers: list[int]) -> list[CandidateSignals]:
    if it.layers == layers:
        return it.cands
    from dataclasses import replace

    cols = [it.layers.index(layer) for layer in layers]
    return [replace(c, band_norms=c.band_norms[:, cols] if c.band_norms.size else c.band_norms) for c in it.cands]


def fit_on_items(
    samples: Sequence[StoredItem | ItemInputs],
    feature_set: str = "both",
    *,
    l2: float | None = None,
    info: dict[str, Any] | None = None,
) -> Probe:
    """Fit a probe on labelled stored items (every layer they all captured).

    ``Probe.info["item_ids"]`` records the items it was fitted on.

    Raises:
        ConfigError: no item with both right and wrong candidates.
    """
    items = [it for it in _inputs(samples) if len(it.cands) > 1]
    layers = _common_layers(items)
    data: list[Any] = [(_restrict(it, layers), it.labels) for it in items]
    meta = {"item_ids": [it.item_id for it in items], **(info or {})}
    return fit_probe(data, layers, feature_set, l2=l2, info=meta)


@dataclass
class Fold:
    """One half of a cross-fit: the probe fitted on ``fit_ids`` scores only ``scored_ids``."""

    fit_ids: list[str]
    scored_ids: list[str]
    probe: Probe


@dataclass
class CrossFit:
    """A 2-fold cross-fitted probe: every item scored once by the probe of the other half.

    Args:
        feature_set: the probe's feature set.
        folds: the two folds.
        scores: item id -> the candidates' logits (only for scored items).
    """

    feature_set: str
    folds: list[Fold] = field(default_factory=list)
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    def probe_for(self, item_id: str) -> Probe:
        """The probe that scores ``item_id`` (fitted without it)."""
        for f in self.folds:
            if item_id in f.scored_ids:
                return f.probe
        raise KeyError(item_id)


def cross_fit(samples: Sequence[StoredItem | ItemInputs], feature_set: str = "both") -> CrossFit:
    """Fit on the odd-index items and score the even ones, and the reverse.

    Raises:
        ConfigError: a half is empty or has no item with both right and wrong candidates.
    """
    items = [it for it in _inputs(samples) if len(it.cands) > 1]
    halves = [[it for it in items if it.index % 2 == f] for f in (0, 1)]
    if not halves[0] or not halves[1]:
        raise ConfigError("cross-fitting needs items of both index parities (at least two items)")
    out = CrossFit(feature_set)
    for f in (0, 1):
        fit_half, scored = halves[1 - f], halves[f]
        probe = fit_on_items(fit_half, feature_set)
        out.folds.append(Fold([it.item_id for it in fit_half], [it.item_id for it in scored], probe))
        for it in scored:
            out.scores[it.item_id] = probe.scores(_restrict(it, probe.layers))
    return out


def _auc_diff(wa: np.ndarray, wb: np.ndarray, p: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC(a) − AUC(b) of (resampled) items: pooled wins over pooled pairs."""
    ps = p.sum(axis)
    return wa.sum(axis) / ps - wb.sum(axis) / ps


def _item_bootstrap(
    WA: np.ndarray, WB: np.ndarray, P: np.ndarray, n_boot: int, seed: int
) -> tuple[np.ndarray, float, float]:
    """Paired item bootstrap of :func:`_auc_diff` by ``scipy.stats.bootstrap``: (differences, lo, hi).

    scipy draws the item indices as one ``rng.integers(0, items, (n_boot, items))``
    from ``np.random.default_rng(seed)``, the draws of the earlier hand-written
    loop, so the published intervals reproduce.
    """
    from scipy.stats import bootstrap

    if P.size == 1:  # scipy needs two items; every resample of one item is that item
        d = float(_auc_diff(WA, WB, P))
        return np.full(n_boot, d), d, d
    res = bootstrap(
        (WA, WB, P),
        _auc_diff,
        paired=True,
        vectorized=True,
        n_resamples=n_boot,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return np.asarray(res.bootstrap_distribution), float(ci.low), float(ci.high)


def paired_auc_bootstrap(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    n_boot: int = 10_000,
    seed: int = 0,
) -> dict[str, float]:
    """Within-item AUC of two scores on the same items, and a paired item-bootstrap CI of the difference.

    Items are resampled with replacement; each resample's AUC is the pooled
    (right, wrong) pair count ratio over its items, for ``a`` and ``b`` alike.

    Returns:
        ``{"auc_a", "auc_b", "diff", "lo", "hi", "p", "items", "pairs"}`` (95% percentile CI;
        ``p``: share of resampled differences on the other side of 0, two-sided).
    """
    wa: list[float] = []
    wb: list[float] = []
    pairs: list[Any] = []
    for sa, sb, y in zip(a, b, labels, strict=True):
        y = np.asarray(y, dtype=bool)
        pos, neg = y.sum(), (~y).sum()
        if pos == 0 or neg == 0:
            continue
        for s, acc in ((np.asarray(sa, float), wa), (np.asarray(sb, float), wb)):
            d = s[y][:, None] - s[~y][None, :]
            acc.append(float((d > 0).sum() + 0.5 * (d == 0).sum()))
        pairs.append(float(pos * neg))
    if not pairs:
        nan = float("nan")
        return {"auc_a": nan, "auc_b": nan, "diff": nan, "lo": nan, "hi": nan, "p": nan, "items": 0, "pairs": 0}
    WA, WB, P = np.array(wa), np.array(wb), np.array(pairs)
    auc_a, auc_b = WA.sum() / P.sum(), WB.sum() / P.sum()
    d = float(auc_a - auc_b)
    diffs, lo, hi = _item_bootstrap(WA, WB, P, n_boot, seed)
    side = float(np.mean(diffs <= 0) if d > 0 else np.mean(diffs >= 0))
    return {
        "auc_a": float(auc_a),
        "auc_b": float(auc_b),
        "diff": d,
        "lo": lo,
        "hi": hi,
        "p": min(1.0, 2 * side),
        "items": int(P.size),
        "pairs": int(P.sum()),
    }
