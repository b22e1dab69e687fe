"""Accuracy vs N: the table's rules applied to subsets of each item's stored candidates.

Each rule is the table's (same :class:`~l2reason.backends.base.SelectionSpec`,
same seed, so the same tie-breaks; ℓ2 scores recompute the pooled τ on the
subset; the probe rule uses the cross-fitted probe that never saw the item),
applied to every subset of size N (or ``n_subsamples`` random ones when there
are more), candidates in their stored order. At the stored N the only subset
is the full set, so the curve equals the table; at N = 1 every rule returns
the one candidate, so the point is the mean single-sample accuracy.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from l2reason.errors import L2ReasonError
from l2reason.eval.harness import RunConfig, StoredItem
from l2reason.eval.methods import selection_spec
from l2reason.eval.report.calibrated import CrossProbes, restrict_cands
from l2reason.eval.report.data import CURVE_METHODS, PROBE_CV

Subsets = dict[tuple[int, int], list[tuple[int, ...]]]
"""(candidates of an item, N) -> the subsets of that size drawn for such items."""


def _subsets(k: int, n: int, cap: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Every size-``n`` subset of ``range(k)`` (sorted) when there are at most ``cap``, else ``cap`` random ones."""
    if math.comb(k, n) <= cap:
        return list(itertools.combinations(range(k), n))
    seen: set[tuple[int, ...]] = set()
    while len(seen) < cap:
        seen.add(tuple(sorted(int(x) for x in rng.choice(k, size=n, replace=False))))
    return sorted(seen)


def accuracy_vs_n(
    samples: list[StoredItem],
    band_cands: dict[str, tuple[list[Any], list[int]]],
    probes: CrossProbes,
    cfg: RunConfig,
    n_subsamples: int,
    seed: int,
    available: set[str],
) -> tuple[dict[str, dict[int, float]], dict[int, int]]:
    """Accuracy vs N for the main rules the table shows (``available``: its row names).

    Args:
        samples: the items of the selection pass.
        band_cands: item id -> its candidates' band signals and the band's layers.
        probes: the cross-fitted probes (the probe curve uses the ``"both"`` fit).
        cfg: the run config (the items' seeds).
        n_subsamples: the most subsets per item and N.
        seed: seed of the random subsets.
        available: the table's rows; a curve only for those.

    Returns:
        ``({rule: {N: accuracy}}, {N: subsets per item (the most over items)})``.
    """
    counts = [len(r.correct) for r in samples]
    if not counts:
        return {}, {}
    kmin = min(counts)
    ns = sorted({k for k in (1, 2, 4, 8, 16, 32, 64) if k <= kmin} | {kmin})
    rng = np.random.default_rng(seed)
    subsets = {(k, n): _subsets(k, n, n_subsamples, rng) for k in sorted(set(counts)) for n in ns}
    sizes = {n: max(len(subsets[(k, n)]) for k in set(counts)) for n in ns}
    probe_cv = probes.fits.get("both")
    out: dict[str, dict[int, float]] = {}
    for name in CURVE_METHODS:
        if name not in available:
            continue  # a curve only for the rules the table shows
        if name == PROBE_CV and (probe_cv is None or not probes.inputs):
            continue
        try:
            per_n = _curve(name, samples, band_cands, probes, cfg, ns, subsets)
        except (L2ReasonError, KeyError):
            continue
        out[name] = {n: float(np.mean(v)) for n, v in per_n.items()}
    return out, sizes


def _curve(
    name: str,
    samples: list[StoredItem],
    band_cands: dict[str, tuple[list[Any], list[int]]],
    probes: CrossProbes,
    cfg: RunConfig,
    ns: list[int],
    subsets: Subsets,
) -> dict[int, list[float]]:
    """Rule ``name``'s accuracy per N and item, averaged over that item's subsets of size N."""
    from l2reason.backends.base import SelectionSpec
    from l2reason.select import select_candidates

    per_n: dict[int, list[float]] = {n: [] for n in ns}
    for r in samples:
        y = np.asarray(r.correct, dtype=bool)
        if name == PROBE_CV:
            pr = probes.fits["both"].probe_for(r.item_id)
            cands, used = restrict_cands(probes.inputs[r.item_id], pr.layers), pr.layers
            spec = SelectionSpec(method="l2-probe", seed=cfg.item_seed(r.index))
        else:
            pr = None
            cands, used = band_cands[r.item_id]
            spec = selection_spec(name, seed=cfg.item_seed(r.index))
        for n in ns:
            hits = []
            for sub in subsets[(len(y), n)]:
                if n == 1:
                    hits.append(bool(y[sub[0]]))  # every rule returns the only candidate
                    continue
                sel = select_candidates([cands[j] for j in sub], list(used), spec, probe=pr)
                hits.append(bool(y[sub[sel.index]]))
            per_n[n].append(float(np.mean(hits)))
    return per_n
