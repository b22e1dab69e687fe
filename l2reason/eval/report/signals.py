"""Which per-candidate signals separate right from wrong candidates: AUCs, per layer, norm distributions.

For every item with a pooled τ, each candidate gets every score (the ℓ2
scores on the default band with the item's pooled τ, self-certainty,
DeepConf, ``-length``, the calibrated and cross-fitted rules' scores), the
mean norm and ``B/T`` of each single layer, and its label. From those:

- :func:`signal_table`: per score, the pooled ROC-AUC for "this candidate is
  right", the within-item AUC (P(a right candidate outscores a wrong one of
  the same item)) and the Spearman correlation with length;
- :func:`layer_table`: the same AUCs for each layer's mean norm and ``B/T``;
- :func:`norm_distributions`: per band layer, the candidates' mean norms of
  right vs wrong candidates, pooled and minus their item's mean.

Higher score = "more likely right" throughout; NaN scores (an item a rule
was not scored on) are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from l2reason.errors import ConfigError
from l2reason.eval.harness import StoredItem
from l2reason.eval.methods import AUTO, PROBE, selection_spec
from l2reason.eval.report.calibrated import CrossProbes, HeldOut
from l2reason.eval.report.data import answers_of, probe_name
from l2reason.eval.stats import roc_auc, spearman, within_item_auc


def candidate_scores(cands: list[Any], tau: np.ndarray) -> dict[str, np.ndarray]:
    """Per-candidate scores of one item (higher = 'more likely right')."""
    from l2reason.techniques.baselines import deepconf_scores, self_certainty_scores
    from l2reason.techniques.selection import SCORE_NAMES, l2_scores

    out: dict[str, np.ndarray] = {}
    for s in SCORE_NAMES:
        out[f"l2:{s}"] = l2_scores(cands, tau, s)
    if all(c.token_self_certainty is not None for c in cands):
        out["self-certainty"] = self_certainty_scores(cands)
    if all(c.token_confidence is not None for c in cands):
        out["deepconf"] = deepconf_scores(cands, mode="lowest_group")
        out["deepconf-tail"] = deepconf_scores(cands, mode="tail")
    out["-length"] = -np.array([float(c.n_tokens) for c in cands])
    return out


def layer_stats(item: StoredItem, pre: Any = None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Per candidate and layer: mean norm and B/T with the item's pooled τ. ``[N, L]`` each.

    ``pre``: the item's probe inputs (every captured layer) when already built.
    """
    from l2reason.select import candidate_signals, pooled_tau

    if pre is not None:
        cands, used = pre.cands, pre.layers
    else:
        c0 = item.result.candidates[0]
        layers = c0.norms.layers if c0.norms is not None else []
        cands, used = candidate_signals(item.result, layers=layers, extractor=answers_of(item))
    tau = pooled_tau(cands)  # [L]
    N, L = len(cands), len(used)
    mean = np.full((N, L), np.nan)
    bt = np.full((N, L), np.nan)
    for i, c in enumerate(cands):
        a = c.band_norms  # [T, L], NaN = masked
        if a.size == 0:
            continue
        valid = np.isfinite(a)
        cnt = valid.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean[i] = np.where(cnt > 0, np.where(valid, a, 0).sum(0) / np.maximum(cnt, 1), np.nan)
            bt[i] = np.where(cnt > 0, np.where(valid, np.maximum(a - tau, 0), 0).sum(0) / np.maximum(cnt, 1), np.nan)
    return mean, bt, used


def aucs(scores: list[np.ndarray], labels: list[np.ndarray]) -> tuple[float, float, int]:
    """Pooled AUC and within-item AUC (pairs), NaN candidates dropped."""
    s_all, y_all, s_in, y_in = [], [], [], []
    for s, y in zip(scores, labels, strict=True):
        keep = np.isfinite(s)
        s_all.append(s[keep])
        y_all.append(y[keep])
        if keep.any():
            s_in.append(s[keep])
            y_in.append(y[keep])
    if not s_in:
        return float("nan"), float("nan"), 0
    pooled = roc_auc(np.concatenate(s_all), np.concatenate(y_all))
    within, pairs = within_item_auc(s_in, y_in)
    return pooled, within, pairs


@dataclass
class CandidateData:
    """The per-candidate numbers of the items with a pooled τ, item by item (same order in every list).

    Args:
        per_score: score name -> per item, the candidates' scores ``[N]``.
        labels: per item, the candidates' right/wrong ``[N]``.
        lengths: per item, the candidates' generated tokens ``[N]``.
        layer_mean, layer_bt: per item, mean norm and B/T per candidate and layer ``[N, L]``.
        used_layers: the layers of ``layer_mean``'s columns.
        band_cands: item id -> the candidates' band signals and the band's layers (every item).
    """

    per_score: dict[str, list[np.ndarray]] = field(default_factory=dict)
    labels: list[np.ndarray] = field(default_factory=list)
    lengths: list[np.ndarray] = field(default_factory=list)
    layer_mean: list[np.ndarray] = field(default_factory=list)
    layer_bt: list[np.ndarray] = field(default_factory=list)
    used_layers: list[int] = field(default_factory=list)
    band_cands: dict[str, tuple[list[Any], list[int]]] = field(default_factory=dict)


def collect_candidates(
    samples: list[StoredItem], num_layers: int, auto: HeldOut, probe: HeldOut | None, probes: CrossProbes
) -> CandidateData:
    """Every item's candidate scores, labels, lengths and per-layer statistics.

    ``probe``: the calibration file's probe when the table has its rows (else
    None). An item whose pooled τ cannot be computed keeps only its band signals.
    """
    from l2reason.select import candidate_signals, pooled_tau

    out = CandidateData()
    for r in samples:
        cands, band_used = candidate_signals(r.result, layers="band", num_layers=num_layers, extractor=answers_of(r))
        out.band_cands[r.item_id] = (cands, band_used)
        try:
            tau = pooled_tau(cands)
        except ConfigError:
            continue
        for k, v in _item_scores(r, cands, tau, num_layers, auto, probe, probes).items():
            out.per_score.setdefault(k, []).append(np.asarray(v, dtype=float))
        out.labels.append(np.asarray(r.correct, dtype=bool))
        out.lengths.append(np.array([c.completion_tokens for c in r.result.candidates], dtype=float))
        m, b, out.used_layers = layer_stats(r, probes.inputs.get(r.item_id))
        out.layer_mean.append(m)
        out.layer_bt.append(b)
    return out


def _item_scores(
    r: StoredItem,
    cands: list[Any],
    tau: np.ndarray,
    num_layers: int,
    auto: HeldOut,
    probe: HeldOut | None,
    probes: CrossProbes,
) -> dict[str, np.ndarray]:
    """One item's scores: the signals, then the calibrated rules' (NaN where held out), then the cross-fitted."""
    from l2reason.select import select_result

    out = candidate_scores(cands, tau)
    missing = np.full(len(r.correct), np.nan)
    if auto.rule and r.item_id in auto.skip:
        out[AUTO] = missing  # calibration item: left out
    elif auto.rule:
        spec = selection_spec(AUTO, auto=auto.rule)
        sel = select_result(r.result, spec, num_layers=num_layers, extractor=answers_of(r))
        out[AUTO] = np.asarray(sel.scores, dtype=float)
    if probe is not None and probe.rule:
        if r.item_id in probe.skip:
            out[PROBE] = missing  # fitted on it: left out
        else:
            sel = select_result(r.result, PROBE, num_layers=num_layers, extractor=answers_of(r), probe=probe.rule)
            out[PROBE] = np.asarray(sel.scores, dtype=float)
    for fs, cf in probes.fits.items():
        out[probe_name(fs)] = np.asarray(cf.scores.get(r.item_id, missing), dtype=float)
    return out


def _spearman_with_length(scores: np.ndarray, lengths: np.ndarray) -> float:
    keep = np.isfinite(scores)
    return spearman(scores[keep], lengths[keep]) if keep.sum() > 1 else float("nan")


def signal_table(data: CandidateData) -> list[dict[str, Any]]:
    """Per score: pooled AUC, within-item AUC, its (right, wrong) pairs and the Spearman with length."""
    all_len = np.concatenate(data.lengths) if data.lengths else np.zeros(0)
    out = []
    for name, scores in data.per_score.items():
        pooled, within, pairs = aucs(scores, data.labels)
        rho = _spearman_with_length(np.concatenate(scores), all_len)
        out.append({"score": name, "pooled_auc": pooled, "within_auc": within, "pairs": pairs, "spearman_length": rho})
    return out


def layer_table(data: CandidateData) -> list[dict[str, Any]]:
    """Per layer: the AUCs of its mean norm and of its B/T as a score, and the mean's Spearman with length."""
    all_len = np.concatenate(data.lengths) if data.lengths else np.zeros(0)
    out = []
    for j, layer in enumerate(data.used_layers):
        m_s = [x[:, j] for x in data.layer_mean]
        pm, wm, pairs = aucs(m_s, data.labels)
        pb, wb, _ = aucs([x[:, j] for x in data.layer_bt], data.labels)
        out.append(
            {
                "layer": layer,
                "mean_pooled_auc": pm,
                "mean_within_auc": wm,
                "bt_pooled_auc": pb,
                "bt_within_auc": wb,
                "pairs": pairs,
                "mean_spearman_length": _spearman_with_length(np.concatenate(m_s), all_len),
            }
        )
    return out


def norm_distributions(data: CandidateData, band: list[int]) -> dict[str, Any]:
    """Per band layer: right and wrong candidates' mean norms, pooled and minus their item's mean.

    The within-item view keeps only the items with both right and wrong
    candidates: the contrast a selector must use.
    """
    y_all = np.concatenate(data.labels) if data.labels else np.zeros(0, dtype=bool)
    out: dict[str, Any] = {}
    for layer in band:
        if layer not in data.used_layers or not data.layer_mean:
            continue
        j = data.used_layers.index(layer)
        v = np.concatenate([x[:, j] for x in data.layer_mean])
        right_in: list[float] = []
        wrong_in: list[float] = []
        for x, y in zip(data.layer_mean, data.labels, strict=True):
            col = x[:, j]
            ok = np.isfinite(col)
            if not (y[ok].any() and not y[ok].all()):
                continue
            d = col[ok] - col[ok].mean()
            right_in += d[y[ok]].tolist()
            wrong_in += d[~y[ok]].tolist()
        out[str(layer)] = {
            "correct": v[y_all & np.isfinite(v)].tolist(),
            "incorrect": v[~y_all & np.isfinite(v)].tolist(),
            "correct_within": right_in,
            "incorrect_within": wrong_in,
        }
    return out
