"""Statistics and the report of an evaluation run (markdown, JSON and plots).

Everything is computed from the stored run (:func:`~l2reason.eval.harness.load_run`);
nothing is generated again, so ``l2reason report RUN_DIR`` re-renders at will.

What it reports (the rules and baselines: ``docs/techniques.md``, "Selection rules and baselines"):

- **Accuracy per method** with a 95% percentile-bootstrap CI. Selection
  methods are scored on the same N samples per item; generation methods are
  their own greedy passes. Two reference rows: ``sample@1`` (the first
  sample) and ``oracle@N`` (some sample is right: no selector can beat it).
- **Paired comparisons** against greedy and against majority vote, on the
  items both have: the accuracy difference with its paired-bootstrap CI and
  p-value, and the exact McNemar test (b01 = baseline wrong & method right,
  b10 = the reverse).
- **Signals**: for each per-candidate score (every ℓ2 score on the default
  band with per-item pooled τ, self-certainty, DeepConf, −length) the pooled
  ROC-AUC for "this candidate is right", the within-item AUC
  (P(right candidate scores above a wrong one of the same item)) and the
  Spearman correlation with length. A score is interesting for selection
  only if its within-item AUC beats −length's.
- **Per layer, all layers**: the same AUCs of the mean norm and of ``B/T`` at
  each single layer: where in depth the signal lives for this model.
- **The learned probe** (``l2-probe-cv``): an L2-regularised logistic
  regression over per-candidate hidden-state and confidence features,
  cross-fitted on item halves (every item scored once by a probe fitted
  without it), as argmax and as a probe-weighted vote, plus ablations with
  confidence features only, ℓ2 features only and the base features only; the
  paired difference "both" − "confidence only" (accuracy and within-item AUC,
  paired-bootstrap CIs) answers "do the norms add information?".
- **Accuracy vs N** (1, 2, 4, … N): each point applies exactly the table's
  rule (same selector, same seed, same tie-breaks, pooled τ recomputed on the
  subset) to subsets of the stored candidates: every subset of size N when
  there are at most ``n_subsamples`` of them, else that many random ones. At
  the stored N it is the table's value; at N = 1 it is the mean accuracy of a
  single sample over all candidates (the table's ``sample@1`` is candidate 0).
- **Ties**: for the argmax rules, the share of items whose best score was
  shared by several candidates (broken by a seeded draw among the tied).
- **Cost**: generated tokens and wall seconds per item of each pass, and the
  **truncation rate** (samples cut off at the token limit) with the accuracy
  of cut-off vs finished samples.

Example:
    >>> from l2reason.eval.report import write_report
    >>> write_report("runs/gsm")  # doctest: +SKIP
    PosixPath('runs/gsm/report/report.md')
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from l2reason.errors import ConfigError, L2ReasonError
from l2reason.eval.harness import RunData, StoredItem, load_run, pass_path, stored_json, suppression_events
from l2reason.eval.methods import AUTO, PROBE, PROBE_VOTE, format_method_list, selection_spec
from l2reason.eval.stats import (
    bootstrap_ci,
    mcnemar,
    paired_bootstrap,
    roc_auc,
    spearman,
    within_item_auc,
)

__all__ = ["MethodRow", "ReportData", "compute_report", "render_markdown", "write_report"]

logger = logging.getLogger(__name__)

GREEDY = "greedy"
MAJORITY = "majority"
CURVE_METHODS = ("majority", "l2:B/T", "l2:z_mean", "self-certainty", "deepconf", "shortest", "l2-probe-cv")
PROBE_CV = "l2-probe-cv"
"""Report row: the probe (all features), 2-fold cross-fitted on the run's own items, argmax."""
PROBE_VOTE_CV = "l2-probe-vote-cv"
"""Report row: the same cross-fitted probe, probe-weighted answer vote."""
PROBE_ABLATIONS = ("confidence", "l2", "base")
"""Feature sets of the ablation rows ``l2-probe-cv:<set>`` (argmax)."""


@dataclass
class Paired:
    """Method minus baseline on the items both have."""

    n: int
    diff: float
    lo: float
    hi: float
    p_boot: float
    wins: int  # method right, baseline wrong
    losses: int  # method wrong, baseline right
    p_mcnemar: float


@dataclass
class MethodRow:
    """One method's accuracy and cost.

    Args:
        name: the method name.
        kind: ``"selection"``, ``"generation"`` or ``"reference"``.
        correct: item id -> right or wrong.
        acc, lo, hi: accuracy and its 95% bootstrap CI.
        tokens: generated tokens per item (all N candidates for selection methods).
        seconds: wall seconds per item.
        vs_greedy, vs_majority: paired comparisons (None when not computable).
    """

    name: str
    kind: str
    correct: dict[str, bool]
    acc: float = float("nan")
    lo: float = float("nan")
    hi: float = float("nan")
    tokens: float = float("nan")
    seconds: float = float("nan")
    vs_greedy: Paired | None = None
    vs_majority: Paired | None = None
    ties: int | None = None  # items whose best score several candidates shared (argmax rules only)

    def record(self, item_id: str, correct: bool, details: dict[str, Any]) -> None:
        """One item's outcome; a selection that reports ``n_tied`` (the argmax rules) counts toward ``ties``."""
        self.correct[item_id] = correct
        if "n_tied" in details:
            self.ties = (self.ties or 0) + int(details["n_tied"] > 1)


@dataclass
class ReportData:
    """Everything the report shows, as plain numbers."""

    config: dict[str, Any]
    n_items: int
    rows: list[MethodRow] = field(default_factory=list)
    signals: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[str, dict[int, float]] = field(default_factory=dict)
    truncation: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    band: list[int] = field(default_factory=list)
    norm_dist: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    curve_sizes: dict[int, int] = field(default_factory=dict)


def _ci(values: Sequence[bool], n_boot: int, seed: int) -> tuple[float, float, float]:
    return bootstrap_ci(np.asarray(values, dtype=float), n_boot=n_boot, seed=seed)


def _paired(a: dict[str, bool], b: dict[str, bool], n_boot: int, seed: int) -> Paired | None:
    common = [k for k in a if k in b]
    if not common:
        return None
    xa = np.array([a[k] for k in common], dtype=float)
    xb = np.array([b[k] for k in common], dtype=float)
    d, lo, hi, p = paired_bootstrap(xa, xb, n_boot=n_boot, seed=seed)
    losses, wins, pm = mcnemar(xa, xb)  # mcnemar(a, b): (a wrong & b right, a right & b wrong)
    return Paired(len(common), d, lo, hi, p, wins, losses, pm)


def _pass_cost(items: Sequence[StoredItem]) -> tuple[float, float]:
    if not items:
        return float("nan"), float("nan")
    toks = np.mean([r.result.completion_tokens for r in items])
    secs = np.mean([r.seconds for r in items])
    return float(toks), float(secs)


def _intervention_notes(name: str, items: Sequence[StoredItem], notes: list[str]) -> None:
    """What ALRR and ERSS did over a generation pass, from each candidate's intervention report."""
    steps = active = tried = accepted = fires = injections = n = 0
    layers = 0
    for r in items:
        for c in r.result.candidates:
            iv = c.interventions or {}
            if "alrr" in iv:
                a = iv["alrr"]
                layers = len(a["layers"])
                steps += int(a["decode_steps"]) * layers
                active += int(sum(a["active_tokens"]))
                tried += int(sum(a["passes_tried"]))
                accepted += int(sum(a["passes_accepted"]))
            if "erss" in iv:
                e = iv["erss"]
                n += 1
                fires += int(e["fires"])
                injections += len(e["injections"])
    if steps:
        notes.append(
            f"{name}: {100 * active / steps:.2f}% of (token, layer) steps were active (τ < n < b·τ) over {layers} "
            f"layers; {tried} re-run passes tried, {accepted} accepted"
        )
    if n:
        notes.append(f"{name}: the trigger fired {fires} times and injected {injections} times over {n} candidates")


def _auto_overlap(run: RunData) -> tuple[dict[str, Any] | None, set[str], str | None]:
    """The auto selection, the run items it must skip (its calibration split), and a note.

    ``l2-auto`` is scored only on items outside the split it was chosen on; if
    every item of the run was in it, it is not reported.
    """
    auto = run.config.auto_selection
    if not auto:
        return None, set(), None
    cal_ids = set(auto.get("split", {}).get("item_ids", []))
    if not cal_ids:
        return None, set(), "l2-auto not reported: the calibration file does not record its calibration split"
    overlap = {r.item_id for r in run.samples if r.item_id in cal_ids}
    if overlap and len(overlap) == len(run.samples):
        return (
            None,
            overlap,
            (
                f"l2-auto not reported: all {len(overlap)} items were in its calibration split; "
                "evaluate on a disjoint split (another --offset or seed)"
            ),
        )
    if overlap:
        return (
            auto,
            overlap,
            (
                f"l2-auto is scored on the {len(run.samples) - len(overlap)} items outside its calibration split "
                f"({len(overlap)} of this run's items were in it, e.g. {sorted(overlap)[0]}); its Δ columns compare "
                "on those items only"
            ),
        )
    return auto, set(), None


AUTO_CV = "l2-auto-cv"
"""Report row: the auto-calibrated ℓ2 selection, 2-fold cross-fitted on the run's own items."""


def _cross_fitted_auto(
    samples: list[StoredItem], num_layers: int, notes: list[str], seeds: dict[str, int] | None = None
) -> MethodRow | None:
    """Auto-calibrated selection scored only on items it was not chosen on.

    The items are split in two folds by index parity; the (band, score) chosen
    on one fold (:func:`~l2reason.eval.autocal.choose_selection`, within-item
    AUC) selects the candidates of the other. Every item is scored exactly once,
    by a choice made without it, so the row is comparable with the others.
    """
    from l2reason.eval.autocal import choose_selection
    from l2reason.select import select_result

    folds = [[r for r in samples if r.index % 2 == f] for f in (0, 1)]
    if not folds[0] or not folds[1]:
        return None
    row = MethodRow(AUTO_CV, "selection", {})
    picks = []
    for f in (0, 1):
        try:
            choice = choose_selection(folds[1 - f], num_layers)
        except L2ReasonError as e:
            notes.append(f"{AUTO_CV}: not scored ({e})")
            return None
        pick = "highest" if choice.get("direction", "high") == "high" else "lowest"
        picks.append(f"layers {choice['layers']} {pick} {choice['score']} (within AUC {choice['value']:.3f})")
        for r in folds[f]:
            spec = selection_spec(AUTO, auto=choice, seed=(seeds or {}).get(r.item_id, 0))
            sel = select_result(r.result, spec, num_layers=num_layers, extractor=_answers_of(r))
            row.correct[r.item_id] = bool(r.correct[sel.index])
    notes.append(
        f"{AUTO_CV}: band and score chosen on the odd-index items and scored on the even ones ({picks[0]}), "
        f"and the reverse ({picks[1]})"
    )
    return row


def _probe_overlap(run: RunData) -> tuple[dict[str, Any] | None, set[str], str | None]:
    """The run's probe (from the calibration file), the items it must skip (fitted on them), and a note."""
    probe = run.config.probe
    if not probe:
        return None, set(), None
    info = probe.get("info") or {}
    fit_ids = set(info.get("item_ids") or []) | set((info.get("split") or {}).get("item_ids") or [])
    if not fit_ids:
        return None, set(), "l2-probe not reported: the probe does not record the items it was fitted on"
    overlap = {r.item_id for r in run.samples if r.item_id in fit_ids}
    if overlap and len(overlap) == len(run.samples):
        return (
            None,
            overlap,
            f"l2-probe not reported: all {len(overlap)} items were in its calibration split; evaluate on other items",
        )
    if overlap:
        return (
            probe,
            overlap,
            (
                f"l2-probe is scored on the {len(run.samples) - len(overlap)} items outside the split it was fitted "
                f"on ({len(overlap)} of this run's items were in it); its Δ columns compare on those items only"
            ),
        )
    return probe, set(), None


def _probe_cv(
    samples: list[StoredItem], cfg: Any, rep: ReportData, n_boot: int
) -> tuple[list[Any], dict[str, Any], list[MethodRow]]:
    """Cross-fitted probe rows: ``l2-probe-cv`` (argmax), ``l2-probe-vote-cv`` and the ablations.

    Returns the items' probe inputs, feature set -> :class:`~l2reason.eval.probe.CrossFit`,
    and the rows. ``rep.probe`` receives the "do norms add information?" comparison.
    """
    from l2reason.backends.base import SelectionSpec
    from l2reason.eval.probe import cross_fit, item_inputs, paired_auc_bootstrap
    from l2reason.select import select_candidates

    try:
        inputs = [item_inputs(r) for r in samples]
    except L2ReasonError as e:
        rep.notes.append(f"{PROBE_CV}: not scored ({e})")
        return [], {}, []
    by_id = {it.item_id: it for it in inputs}
    fits: dict[str, Any] = {}
    for fs in ("both", *PROBE_ABLATIONS):
        try:
            fits[fs] = cross_fit(inputs, fs)
        except L2ReasonError as e:
            rep.notes.append(f"{_probe_name(fs)}: not scored ({e})")
    rows: list[MethodRow] = []
    for fs, cf in fits.items():
        rules = [("l2-probe", _probe_name(fs))] + ([("l2-probe-vote", PROBE_VOTE_CV)] if fs == "both" else [])
        for method, name in rules:
            row = MethodRow(name, "selection", {})
            try:
                for r in samples:
                    if r.item_id not in cf.scores:
                        continue
                    pr = cf.probe_for(r.item_id)  # fitted on the other half: never on this item
                    cands = _restrict_cands(by_id[r.item_id], pr.layers)
                    spec = SelectionSpec(method=method, seed=cfg.item_seed(r.index))
                    sel = select_candidates(cands, pr.layers, spec, probe=pr)
                    row.record(r.item_id, bool(r.correct[sel.index]), sel.details)
            except L2ReasonError as e:
                rep.notes.append(f"{name}: not scored ({e})")
                continue
            rows.append(row)
    if "both" in fits:
        f = fits["both"]
        picks = []
        for fold, half in zip(f.folds, ("even", "odd"), strict=True):
            top = fold.probe.top_effects(5)
            picks.append(
                f"scored the {half}-index items with penalty {fold.probe.l2:g} "
                f"(largest effects, logit per SD: {', '.join(f'{n} {w:+.2f}' for n, w in top)})"
            )
        rep.notes.append(f"{PROBE_CV}: a probe fitted on the other half of the items " + "; ".join(picks))
    rows_by = {r.name: r for r in rows}
    if PROBE_CV in rows_by and _probe_name("confidence") in rows_by:
        a, b = rows_by[PROBE_CV].correct, rows_by[_probe_name("confidence")].correct
        common = [k for k in a if k in b]
        labels = [by_id[k].labels for k in common]
        auc = paired_auc_bootstrap(
            [fits["both"].scores[k] for k in common],
            [fits["confidence"].scores[k] for k in common],
            labels,
            n_boot=n_boot,
            seed=7,
        )
        rep.probe = {"accuracy": {"a": PROBE_CV, "b": _probe_name("confidence"), "items": len(common)}, "auc": auc}
    return inputs, fits, rows


def _probe_name(feature_set: str) -> str:
    return PROBE_CV if feature_set == "both" else f"{PROBE_CV}:{feature_set}"


def _restrict_cands(it: Any, layers: list[int]) -> list[Any]:
    from l2reason.eval.probe import _restrict

    return _restrict(it, list(layers))


def _signals(cands: list[Any], tau: np.ndarray) -> dict[str, np.ndarray]:
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


def _layer_stats(item: StoredItem, pre: Any = None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Per candidate and layer: mean norm and B/T with the item's pooled τ. ``[N, L]`` each.

    ``pre``: the item's probe inputs (every captured layer) when already built.
    """
    from l2reason.select import candidate_signals, pooled_tau

    if pre is not None:
        cands, used = pre.cands, pre.layers
    else:
        c0 = item.result.candidates[0]
        layers = c0.norms.layers if c0.norms is not None else []
        cands, used = candidate_signals(item.result, layers=layers, extractor=_answers_of(item))
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


def _aucs(scores: list[np.ndarray], labels: list[np.ndarray]) -> tuple[float, float, int]:
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


def compute_report(run: RunData, *, n_boot: int = 10_000, n_subsamples: int = 200, seed: int = 0) -> ReportData:
    """All the report's numbers from a stored run.

    Args:
        run: the run read back by :func:`~l2reason.eval.harness.load_run`.
        n_boot: bootstrap resamples for CIs and paired tests.
        n_subsamples: random subsets per item and N for accuracy vs N.
        seed: seed of the resampling.

    Returns:
        A :class:`ReportData`.
    """
    from l2reason.select import candidate_signals, pooled_tau, select_result
    from l2reason.signal.band import default_band

    cfg = run.config
    L = cfg.num_layers
    rep = ReportData(config=cfg.model_dump(), n_items=len(run.samples), band=default_band(L))
    if run.skipped:
        rep.notes.append(f"{run.skipped} corrupt results line(s) were skipped while reading the run")
    auto, auto_skip, auto_note = _auto_overlap(run)
    if auto_note:
        rep.notes.append(auto_note)
    probe, probe_skip, probe_note = _probe_overlap(run)
    if probe_note:
        rep.notes.append(probe_note)

    # -- selection methods on the stored samples ------------------------------------------
    samples = [r for r in run.samples if r.result.candidates]
    rows: dict[str, MethodRow] = {}
    tok_s, sec_s = _pass_cost(samples)
    if samples:
        ref1 = MethodRow("sample@1", "reference", {r.item_id: r.correct[0] for r in samples})
        orc = MethodRow(f"oracle@{cfg.n}", "reference", {r.item_id: any(r.correct) for r in samples})
        rows[ref1.name], rows[orc.name] = ref1, orc
    probe_methods = (PROBE, PROBE_VOTE)
    # no sampling pass (n = 0): no selection rows, only the generation passes
    methods = [m for m in cfg.methods if m != AUTO and m not in probe_methods] if cfg.n > 0 else []
    methods += [AUTO] if auto and AUTO in cfg.methods else []
    methods += [m for m in probe_methods if probe and m in cfg.methods]
    if AUTO in cfg.methods and not auto and not auto_note:
        rep.notes.append("l2-auto not reported: no chosen selection in the calibration file when the run started")
    if any(m in cfg.methods for m in probe_methods) and not probe and not probe_note:
        rep.notes.append("l2-probe not reported: no fitted probe in the calibration file when the run started")
    for name in methods:
        row = MethodRow(name, "selection", {})
        try:
            for r in samples:
                if name == AUTO and r.item_id in auto_skip:
                    continue  # chosen on this item: never scored on it
                if name in probe_methods and r.item_id in probe_skip:
                    continue  # fitted on this item: never scored on it
                spec = selection_spec(name, auto=auto, seed=cfg.item_seed(r.index))
                sel = select_result(r.result, spec, num_layers=L, extractor=_answers_of(r), probe=probe)
                row.record(r.item_id, bool(r.correct[sel.index]), sel.details)
        except L2ReasonError as e:
            rep.notes.append(f"{name}: not scored ({e})")
            continue
        row.tokens, row.seconds = tok_s, sec_s
        rows[name] = row
    cross_probes: dict[str, Any] = {}
    inputs: list[Any] = []
    if samples and cfg.n > 1:
        cv = _cross_fitted_auto(samples, L, rep.notes, seeds={r.item_id: cfg.item_seed(r.index) for r in samples})
        if cv is not None:
            cv.tokens, cv.seconds = tok_s, sec_s
            rows[cv.name] = cv
        inputs, cross_probes, probe_rows = _probe_cv(samples, cfg, rep, n_boot)
        for row in probe_rows:
            row.tokens, row.seconds = tok_s, sec_s
            rows[row.name] = row
    for name in ("sample@1", f"oracle@{cfg.n}"):
        if name in rows:
            rows[name].tokens, rows[name].seconds = (tok_s / max(cfg.n, 1) if name == "sample@1" else tok_s), sec_s

    # -- generation methods ---------------------------------------------------------------
    for name, items in run.gens.items():
        row = MethodRow(name, "generation", {r.item_id: r.correct[0] for r in items if r.correct})
        row.tokens, row.seconds = _pass_cost(items)
        rows[name] = row
        _intervention_notes(name, items, rep.notes)
        hits, steps = suppression_events(items)
        if steps:
            msg = f"{name}: suppressed {100 * hits / steps:.2f}% of (token, layer) steps ({hits} of {steps})"
            rate_file = pass_path(run.path, name).with_suffix(".rate.json")
            if rate_file.is_file():
                info = json.loads(rate_file.read_text(encoding="utf-8"))
                msg += (
                    f"; random rate {100 * info['rate']:.2f}% matched to {info['source']} "
                    f"({info['events']} events over {info['token_layers']} token-layers on {info['items']} items)"
                )
            rep.notes.append(msg)

    for i, row in enumerate(rows.values()):
        if row.correct:
            row.acc, row.lo, row.hi = _ci(list(row.correct.values()), n_boot, seed + i)
    greedy = rows.get(GREEDY)
    major = rows.get(MAJORITY)
    for i, row in enumerate(rows.values()):
        if greedy is not None and row is not greedy and row.correct:
            row.vs_greedy = _paired(row.correct, greedy.correct, n_boot, seed + 1000 + i)
        if major is not None and row is not major and row.correct:
            row.vs_majority = _paired(row.correct, major.correct, n_boot, seed + 2000 + i)
    rep.rows = list(rows.values())
    both, conf = rows.get(PROBE_CV), rows.get(_probe_name("confidence"))
    if rep.probe and both is not None and conf is not None:
        acc = _paired(both.correct, conf.correct, n_boot, seed + 3000)
        if acc is not None:
            rep.probe["accuracy"].update(acc.__dict__)
    if samples and greedy is None:
        rep.notes.append("no greedy pass in this run: add --gen-methods greedy for the comparison against greedy")

    # -- signals, per-layer AUCs, norm distributions --------------------------------------
    if samples and cfg.n > 1:
        per_score: dict[str, list[np.ndarray]] = {}
        labels: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        layer_mean: list[np.ndarray] = []
        layer_bt: list[np.ndarray] = []
        used_layers: list[int] = []
        pre = {it.item_id: it for it in inputs}
        band_cands: dict[str, tuple[list[Any], list[int]]] = {}
        for r in samples:
            y = np.asarray(r.correct, dtype=bool)
            cands, band_used = candidate_signals(r.result, layers="band", num_layers=L, extractor=_answers_of(r))
            band_cands[r.item_id] = (cands, band_used)
            try:
                tau = pooled_tau(cands)
            except ConfigError:
                continue
            for k, v in _signals(cands, tau).items():
                per_score.setdefault(k, []).append(np.asarray(v, dtype=float))
            if auto and r.item_id in auto_skip:
                per_score.setdefault(AUTO, []).append(np.full(len(y), np.nan))  # calibration item: left out
            elif auto:
                spec = selection_spec(AUTO, auto=auto)
                sel = select_result(r.result, spec, num_layers=L, extractor=_answers_of(r))
                per_score.setdefault(AUTO, []).append(np.asarray(sel.scores, dtype=float))
            if probe and (PROBE in rows or PROBE_VOTE in rows):
                if r.item_id in probe_skip:
                    per_score.setdefault(PROBE, []).append(np.full(len(y), np.nan))  # fitted on it: left out
                else:
                    sel = select_result(r.result, PROBE, num_layers=L, extractor=_answers_of(r), probe=probe)
                    per_score.setdefault(PROBE, []).append(np.asarray(sel.scores, dtype=float))
            for fs, cf in cross_probes.items():
                per_score.setdefault(_probe_name(fs), []).append(
                    np.asarray(cf.scores.get(r.item_id, np.full(len(y), np.nan)), dtype=float)
                )
            labels.append(y)
            lengths.append(np.array([c.completion_tokens for c in r.result.candidates], dtype=float))
            m, b, used_layers = _layer_stats(r, pre.get(r.item_id))
            layer_mean.append(m)
            layer_bt.append(b)
        all_len = np.concatenate(lengths) if lengths else np.zeros(0)
        for name, scores in per_score.items():
            pooled, within, pairs = _aucs(scores, labels)
            s_all = np.concatenate(scores)
            keep = np.isfinite(s_all)
            rho = spearman(s_all[keep], all_len[keep]) if keep.sum() > 1 else float("nan")
            rep.signals.append(
                {"score": name, "pooled_auc": pooled, "within_auc": within, "pairs": pairs, "spearman_length": rho}
            )
        for j, layer in enumerate(used_layers):
            m_s = [x[:, j] for x in layer_mean]
            b_s = [x[:, j] for x in layer_bt]
            pm, wm, pairs = _aucs(m_s, labels)
            pb, wb, _ = _aucs(b_s, labels)
            m_all = np.concatenate(m_s)
            keep = np.isfinite(m_all)
            rho = spearman(m_all[keep], all_len[keep]) if keep.sum() > 1 else float("nan")
            rep.layers.append(
                {
                    "layer": layer,
                    "mean_pooled_auc": pm,
                    "mean_within_auc": wm,
                    "bt_pooled_auc": pb,
                    "bt_within_auc": wb,
                    "pairs": pairs,
                    "mean_spearman_length": rho,
                }
            )
        y_all = np.concatenate(labels) if labels else np.zeros(0, dtype=bool)
        for layer in rep.band:
            if layer in used_layers and layer_mean:
                j = used_layers.index(layer)
                v = np.concatenate([x[:, j] for x in layer_mean])
                # within-item view: each candidate's mean norm minus its item's mean, on the items
                # that have both right and wrong candidates (the contrast a selector must use)
                right_in: list[float] = []
                wrong_in: list[float] = []
                for x, y in zip(layer_mean, labels, strict=True):
                    col = x[:, j]
                    ok = np.isfinite(col)
                    if not (y[ok].any() and not y[ok].all()):
                        continue
                    d = col[ok] - col[ok].mean()
                    right_in += d[y[ok]].tolist()
                    wrong_in += d[~y[ok]].tolist()
                rep.norm_dist[str(layer)] = {
                    "correct": v[y_all & np.isfinite(v)].tolist(),
                    "incorrect": v[~y_all & np.isfinite(v)].tolist(),
                    "correct_within": right_in,
                    "incorrect_within": wrong_in,
                }
        if len(band_cands) == len(samples):
            rep.curves, rep.curve_sizes = _curves(
                samples, band_cands, pre, cross_probes.get("both"), cfg, n_subsamples, seed, set(rows)
            )

    # -- truncation -----------------------------------------------------------------------
    for pname, items in [("samples", samples), *run.gens.items()]:
        fins = [c.finish_reason for r in items for c in r.result.candidates]
        oks = [ok for r in items for ok in r.correct]
        if not fins:
            continue
        cut = np.array([f == "length" for f in fins])
        ok = np.array(oks, dtype=bool)
        rep.truncation.append(
            {
                "pass": pname,
                "candidates": int(cut.size),
                "truncated": float(cut.mean()),
                "acc_finished": float(ok[~cut].mean()) if (~cut).any() else float("nan"),
                "acc_truncated": float(ok[cut].mean()) if cut.any() else float("nan"),
                "mean_tokens": float(np.mean([c.completion_tokens for r in items for c in r.result.candidates])),
            }
        )
    return rep


def _answers_of(r: StoredItem) -> Any:
    """An extractor that returns the stored answers (the text -> answer of this item)."""
    table = {c.text: a for c, a in zip(r.result.candidates, r.answers, strict=True)}

    def extract(text: str) -> str | None:
        if text in table:
            return table[text]
        from l2reason.eval.answers import extract_answer

        return extract_answer(text)

    return extract


def _subsets(k: int, n: int, cap: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Every size-``n`` subset of ``range(k)`` (sorted) when there are at most ``cap``, else ``cap`` random ones."""
    import itertools

    if math.comb(k, n) <= cap:
        return list(itertools.combinations(range(k), n))
    seen: set[tuple[int, ...]] = set()
    while len(seen) < cap:
        seen.add(tuple(sorted(int(x) for x in rng.choice(k, size=n, replace=False))))
    return sorted(seen)


def _curves(
    samples: list[StoredItem],
    band_cands: dict[str, tuple[list[Any], list[int]]],
    probe_inputs: dict[str, Any],
    probe_cv: Any,
    cfg: Any,
    n_subsamples: int,
    seed: int,
    available: set[str],
) -> tuple[dict[str, dict[int, float]], dict[int, int]]:
    """Accuracy vs N for the main rules: the table's rule applied to subsets of the stored candidates.

    Each rule is the table's (same :class:`SelectionSpec`, same seed, so the
    same tie-breaks; ℓ2 scores recompute the pooled τ on the subset; the
    probe rule uses the cross-fitted probe that never saw the item), applied
    to every subset of size N (or ``n_subsamples`` random ones when there are
    more), candidates in their stored order. At the stored N the only subset
    is the full set, so the curve equals the table; at N = 1 every rule
    returns the one candidate, so the point is the mean single-sample accuracy.

    Returns:
        ``({rule: {N: accuracy}}, {N: subsets per item (the most over items)})``.
    """
    from l2reason.backends.base import SelectionSpec
    from l2reason.select import select_candidates

    counts = [len(r.correct) for r in samples]
    if not counts:
        return {}, {}
    kmin = min(counts)
    ns = sorted({k for k in (1, 2, 4, 8, 16, 32, 64) if k <= kmin} | {kmin})
    rng = np.random.default_rng(seed)
    subsets = {(k, n): _subsets(k, n, n_subsamples, rng) for k in sorted(set(counts)) for n in ns}
    sizes = {n: max(len(subsets[(k, n)]) for k in set(counts)) for n in ns}
    out: dict[str, dict[int, float]] = {}
    for name in CURVE_METHODS:
        if name not in available:
            continue  # a curve only for the rules the table shows
        if name == PROBE_CV and (probe_cv is None or not probe_inputs):
            continue
        per_n: dict[int, list[float]] = {n: [] for n in ns}
        try:
            for r in samples:
                y = np.asarray(r.correct, dtype=bool)
                if name == PROBE_CV:
                    pr = probe_cv.probe_for(r.item_id)
                    cands, used = _restrict_cands(probe_inputs[r.item_id], pr.layers), pr.layers
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
        except (L2ReasonError, KeyError):
            continue
        out[name] = {n: float(np.mean(v)) for n, v in per_n.items()}
    return out, sizes


# ----------------------------------------------------------------------------------------
# rendering


def _f(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _paired_cell(p: Paired | None) -> str:
    if p is None:
        return "–"
    star = " **" if (p.lo > 0 or p.hi < 0) else ""
    return f"{100 * p.diff:+.1f} [{100 * p.lo:+.1f}, {100 * p.hi:+.1f}]{star} p={p.p_boot:.3f}; +{p.wins}/−{p.losses} (McN p={p.p_mcnemar:.3f})"


def reproduce_command(c: dict[str, Any]) -> str:
    """The ``l2reason eval`` command that recreates (or resumes) a run with this config."""
    import shlex

    parts = [
        "l2reason eval",
        f"--dataset {shlex.quote(c['dataset'])}",
        f"--model {shlex.quote(c.get('model') or 'default')}",
        f"--offset {c['offset']}",
        f"--limit {c['limit']}",
        f"-n {c['n']}",
        f"-t {c['max_new_tokens']}",
        f"--temperature {c['temperature']}",
        f"--top-p {c['top_p']}",
        f"--seed {c['seed']}",
        f"--methods {shlex.quote(format_method_list(c.get('methods') or []))}",
        f"--gen-methods {shlex.quote(format_method_list(c.get('gen_methods') or []))}",
    ]
    if c.get("gen_limit"):
        parts.append(f"--gen-limit {c['gen_limit']}")
    parts.append(f"--batch-items {c.get('batch_items', 2)}")
    threads = (c.get("env") or {}).get("torch_threads")
    if threads:
        parts.append(f"--threads {threads}")
    parts.append("--out RUN_DIR")
    return " ".join(parts)


def _probe_markdown(rep: ReportData) -> list[str]:
    """The section on the learned probe and the "do norms add information?" comparison."""
    out = ["## The learned probe: do hidden-state norms add information beyond confidence?\n"]
    out.append(
        f"`{PROBE_CV}` is a logistic regression over per-candidate features (per-layer norm statistics of every "
        "layer, self-certainty, DeepConf confidence, length, finished, vote share; centred within the item), "
        "cross-fitted: a probe fitted on the odd-index items picks among the even ones and the reverse, so no "
        f"item is scored by a probe that saw it. `{PROBE_VOTE_CV}` is its probability-weighted answer vote. "
        f"Ablations: `{PROBE_CV}:confidence` (confidence + base features), `{PROBE_CV}:l2` (ℓ2 + base "
        f"features), `{PROBE_CV}:base` (length, finished, vote share only).\n"
    )
    by = {r.name: r for r in rep.rows}
    names = [PROBE_CV, PROBE_VOTE_CV, *(f"{PROBE_CV}:{fs}" for fs in PROBE_ABLATIONS)]
    sig = {x["score"]: x for x in rep.signals}
    out.append("| probe | features | accuracy % | 95% CI | within-item AUC | Δ vs majority |")
    out.append("|---|---|---:|---|---:|---|")
    feats = {
        PROBE_CV: "all",
        PROBE_VOTE_CV: "all (vote)",
        f"{PROBE_CV}:confidence": "confidence + base",
        f"{PROBE_CV}:l2": "ℓ2 + base",
        f"{PROBE_CV}:base": "base: length, finished, vote share",
    }
    for n in names:
        r = by.get(n)
        if r is None:
            continue
        auc = sig.get(n if n != PROBE_VOTE_CV else PROBE_CV, {}).get("within_auc", float("nan"))
        out.append(
            f"| {n} | {feats[n]} | {_pct(r.acc)} | [{_pct(r.lo)}, {_pct(r.hi)}] | "
            f"{_f(auc)} | {_paired_cell(r.vs_majority)} |"
        )
    acc, auc = rep.probe.get("accuracy", {}), rep.probe.get("auc", {})
    out.append("")
    if "diff" in acc:
        star = " (CI excludes 0)" if (acc["lo"] > 0 or acc["hi"] < 0) else " (CI includes 0)"
        out.append(
            f"- **all features − confidence only, accuracy**: {100 * acc['diff']:+.1f} points "
            f"[{100 * acc['lo']:+.1f}, {100 * acc['hi']:+.1f}]{star}, paired bootstrap p = {acc['p_boot']:.3f}, "
            f"+{acc['wins']}/−{acc['losses']} items (McNemar p = {acc['p_mcnemar']:.3f}), n = {acc['n']} items"
        )
    if auc.get("pairs"):
        star = " (CI excludes 0)" if (auc["lo"] > 0 or auc["hi"] < 0) else " (CI includes 0)"
        out.append(
            f"- **all features − confidence only, within-item AUC**: {auc['auc_a']:.3f} − {auc['auc_b']:.3f} = "
            f"{auc['diff']:+.3f} [{auc['lo']:+.3f}, {auc['hi']:+.3f}]{star}, item bootstrap p = {auc['p']:.3f}, "
            f"{auc['items']} items with right and wrong candidates ({auc['pairs']} pairs)"
        )
    out.append("")
    return out


def render_markdown(rep: ReportData, plots: Sequence[str] = ()) -> str:
    """The report as markdown (tables and links to the plots)."""
    c = rep.config
    out: list[str] = []
    out.append(f"# Evaluation: {c['dataset']} on {c['model_id']}\n")
    out.append(
        f"- items: {rep.n_items} (offset {c['offset']}, limit {c['limit']}); N = {c['n']} samples per item at "
        f"T = {c['temperature']}, top-p = {c['top_p']}; generation passes: "
        f"{', '.join(c.get('gen_methods') or []) or 'none'} on {c['gen_limit'] or 'all'} items; "
        f"max new tokens {c['max_new_tokens']}; seed {c['seed']}"
    )
    out.append(f"- reproduce: `{reproduce_command(c)}`")
    out.append(f"- default layer band: {rep.band}; ℓ2 scores use a per-item pooled τ (Q3 + 1.5·IQR)")
    env = c.get("env") or {}
    if env:
        out.append("- machine: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    out.append(f"- started {c.get('created_at', '')}; report rendered on {platform.node()} ({platform.platform()})\n")

    out.append("## Accuracy\n")
    out.append(
        "Δ columns: method − baseline in points on the shared items, 95% paired-bootstrap CI "
        "(** = excludes 0), bootstrap p, then +wins/−losses with the exact McNemar p.\n"
    )
    out.append("| method | kind | items | accuracy % | 95% CI | Δ vs greedy | Δ vs majority | tokens/item | s/item |")
    out.append("|---|---|---:|---:|---|---|---|---:|---:|")
    for r in rep.rows:
        out.append(
            f"| {r.name} | {r.kind} | {len(r.correct)} | {_pct(r.acc)} | [{_pct(r.lo)}, {_pct(r.hi)}] | "
            f"{_paired_cell(r.vs_greedy)} | {_paired_cell(r.vs_majority)} | {_f(r.tokens, 0)} | {_f(r.seconds, 1)} |"
        )
    out.append(
        "\nSelection methods share one sampling pass, so their tokens and seconds are those of the N samples; "
        "`sample@1` shows one sample's share.\n"
    )
    counts = {len(r.correct) for r in rep.rows if r.correct}
    if len(counts) > 1:
        out.append(
            f"Rows are scored on different numbers of items ({', '.join(str(k) for k in sorted(counts))}): "
            "compare rows over the same items through their Δ columns (computed on the shared items).\n"
        )
    if rep.probe:
        out.extend(_probe_markdown(rep))
    tied = [r for r in rep.rows if r.ties is not None and r.correct]
    if tied:
        out.append("## Ties at the best score\n")
        out.append(
            "Argmax rules: share of items where several candidates shared the best score. Ties are broken by a "
            "draw among the tied candidates seeded with the item's seed (reproducible, and neutral to the "
            "candidate order).\n"
        )
        out.append("| method | items | items with a tie | tie rate % |")
        out.append("|---|---:|---:|---:|")
        for r in tied:
            out.append(f"| {r.name} | {len(r.correct)} | {r.ties} | {_pct((r.ties or 0) / len(r.correct))} |")
        out.append("")

    if rep.truncation:
        out.append("## Truncation\n")
        out.append(
            "| pass | candidates | cut off at the limit % | accuracy finished % | accuracy cut off % | mean tokens |"
        )
        out.append("|---|---:|---:|---:|---:|---:|")
        for t in rep.truncation:
            out.append(
                f"| {t['pass']} | {t['candidates']} | {_pct(t['truncated'])} | {_pct(t['acc_finished'])} | "
                f"{_pct(t['acc_truncated'])} | {_f(t['mean_tokens'], 0)} |"
            )
        out.append("")

    if rep.signals:
        out.append("## Which signals separate right from wrong candidates\n")
        out.append(
            "Within-item AUC = P(a right candidate outscores a wrong one of the same item); 0.5 = no signal. "
            "Compare each score with `-length`: an ℓ2 score is only useful if it beats length alone.\n"
        )
        out.append("| score | pooled AUC | within-item AUC | pairs | Spearman with length |")
        out.append("|---|---:|---:|---:|---:|")
        for s in rep.signals:
            out.append(
                f"| {s['score']} | {_f(s['pooled_auc'])} | {_f(s['within_auc'])} | {s['pairs']} | {_f(s['spearman_length'])} |"
            )
        out.append("")
    if rep.layers:
        out.append("## Per layer (all layers)\n")
        out.append("Mean norm and B/T (per-item pooled τ) of each single layer as a score.\n")
        out.append(
            "| layer | mean: pooled AUC | mean: within AUC | B/T: pooled AUC | B/T: within AUC | mean: Spearman w/ length |"
        )
        out.append("|---:|---:|---:|---:|---:|---:|")
        for x in rep.layers:
            mark = " (band)" if x["layer"] in rep.band else ""
            out.append(
                f"| {x['layer']}{mark} | {_f(x['mean_pooled_auc'])} | {_f(x['mean_within_auc'])} | "
                f"{_f(x['bt_pooled_auc'])} | {_f(x['bt_within_auc'])} | {_f(x['mean_spearman_length'])} |"
            )
        out.append("")
    if rep.curves:
        ns = sorted({k for v in rep.curves.values() for k in v})
        out.append("## Accuracy vs N (subsets of the stored candidates)\n")
        s1 = next((r for r in rep.rows if r.name == "sample@1"), None)
        sizes = ", ".join(f"N={k}: {rep.curve_sizes[k]}" for k in ns if k in rep.curve_sizes)
        out.append(
            "Each rule is exactly the table's (same seed and tie-breaks; ℓ2 scores recompute the pooled τ on the "
            f"subset), averaged over subsets of each size per item ({sizes or 'all subsets'}; every subset when "
            "there are that few). At the largest N the value is the table's. **N = 1 is the mean accuracy of a "
            "single sample over all candidates**"
            + (f"; the table's `sample@1` is candidate 0 only ({_pct(s1.acc)}%)" if s1 is not None else "")
            + ".\n"
        )
        out.append("| rule | " + " | ".join(f"N={k}" for k in ns) + " |")
        out.append("|---|" + "---:|" * len(ns))
        for name, curve in rep.curves.items():
            out.append(f"| {name} | " + " | ".join(_pct(curve.get(k, float("nan"))) for k in ns) + " |")
        out.append("")
    if rep.notes:
        out.append("## Notes\n")
        out.extend(f"- {n}" for n in rep.notes)
        out.append("")
    if plots:
        out.append("## Plots\n")
        out.extend(f"![{Path(p).stem}]({Path(p).name})" for p in plots)
        out.append("")
    return "\n".join(out)


def _plots(rep: ReportData, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[str] = []
    rows = [r for r in rep.rows if r.correct]
    if rows:
        fig, ax = plt.subplots(figsize=(8, 0.36 * len(rows) + 1.6))
        y = np.arange(len(rows))
        acc = np.array([r.acc for r in rows])
        err = np.array([[r.acc - r.lo, r.hi - r.acc] for r in rows]).T
        colors = [
            "tab:gray" if r.kind == "reference" else "tab:blue" if r.kind == "selection" else "tab:orange" for r in rows
        ]
        n_max = max(len(r.correct) for r in rows)
        fewer = [len(r.correct) < n_max for r in rows]
        ax.barh(y, 100 * acc, color=colors, hatch=["//" if f else "" for f in fewer], edgecolor="white")
        # the CI and a marker at the value are drawn apart from the bar, so a 0% row stays visible
        ax.errorbar(100 * acc, y, xerr=100 * err, fmt="none", ecolor="black", capsize=3, lw=1)
        ax.plot(100 * acc, y, "D", color="black", ms=3.5)
        top = float(np.nanmax(100 * np.array([r.hi for r in rows]))) if rows else 100.0
        for yi, r in zip(y, rows, strict=True):
            ax.text(100 * r.hi + 0.01 * max(top, 1.0) + 0.5, float(yi), f"{100 * r.acc:.1f}%", va="center", fontsize=7)
        labels = [f"{r.name} (n={len(r.correct)})" if f else r.name for r, f in zip(rows, fewer, strict=True)]
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xlim(-0.02 * max(top * 1.15, 5.0), max(top * 1.15, 5.0))  # a 0% marker sits clear of the axis
        ax.invert_yaxis()
        ax.set_xlabel(f"accuracy % (95% bootstrap CI); n = {n_max} items unless marked")
        title = "accuracy per method (blue: selection, orange: generation, gray: reference)"
        if any(fewer):
            title += "\nhatched: scored on fewer items (n in the label)"
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        paths.append(str(_save(fig, folder / "accuracy.png")))
    if rep.curves:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        ks_all = sorted({k for c in rep.curves.values() for k in c})
        for name, curve in rep.curves.items():
            ks = sorted(curve)
            ax.plot(ks, [100 * curve[k] for k in ks], marker="o", label=name)
        s1 = next((r for r in rep.rows if r.name == "sample@1" and r.correct), None)
        if s1 is not None:
            ax.plot([1], [100 * s1.acc], "x", color="black", ms=8, label="sample@1 (candidate 0 only)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks_all, [str(k) for k in ks_all])
        ax.minorticks_off()
        ax.set_xlabel("N (candidates); N = 1: mean accuracy of one sample")
        ax.set_ylabel("accuracy %")
        ax.legend(fontsize=7)
        ax.set_title(
            "accuracy vs N: the table's rule on subsets of the stored candidates\n(at the largest N: the table's value)",
            fontsize=9,
        )
        fig.tight_layout()
        paths.append(str(_save(fig, folder / "accuracy_vs_n.png")))
    if rep.layers:
        fig, ax = plt.subplots(figsize=(7, 4))
        ls = [x["layer"] for x in rep.layers]
        for key, label in (
            ("mean_within_auc", "mean norm, within-item"),
            ("mean_pooled_auc", "mean norm, pooled"),
            ("bt_within_auc", "B/T, within-item"),
            ("bt_pooled_auc", "B/T, pooled"),
        ):
            ax.plot(ls, [x[key] for x in rep.layers], marker=".", label=label)
        ax.axhline(0.5, color="k", lw=0.8, ls="--")
        if rep.band:
            ax.axvspan(min(rep.band) - 0.5, max(rep.band) + 0.5, color="tab:green", alpha=0.1, label="default band")
        ax.set_xlabel("layer")
        ax.set_ylabel("AUC for 'candidate is right'")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(str(_save(fig, folder / "auc_per_layer.png")))
    if rep.norm_dist:
        k = len(rep.norm_dist)
        fig, axes = plt.subplots(2, k, figsize=(3.1 * k, 6), squeeze=False)
        views = (
            ("", "candidate mean ‖x‖", "pooled over items"),
            ("_within", "mean ‖x‖ − item mean", "within item"),
        )
        for row, (suffix, xlabel, what) in enumerate(views):
            for ax, (layer, d) in zip(axes[row], rep.norm_dist.items(), strict=True):
                right, wrong = d.get("correct" + suffix, []), d.get("incorrect" + suffix, [])
                vals = right + wrong
                ax.set_title(f"layer {layer}, {what}", fontsize=8)
                ax.set_xlabel(xlabel, fontsize=8)
                ax.set_ylabel("density (share per unit)", fontsize=8)
                if not vals:
                    ax.text(
                        0.5,
                        0.5,
                        "no items with right\nand wrong candidates",
                        ha="center",
                        va="center",
                        transform=ax.transAxes,
                        fontsize=7,
                    )
                    continue
                lo, hi = min(vals), max(vals)
                bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 25)
                for vs, label in ((right, f"right ({len(right)})"), (wrong, f"wrong ({len(wrong)})")):
                    if vs:
                        ax.hist(vs, bins=bins, alpha=0.6, density=True, label=label)
                if suffix:
                    ax.axvline(0.0, color="k", lw=0.7, ls="--")
                ax.legend(fontsize=7)
        fig.suptitle(
            "candidate mean norm, right vs wrong: top pooled across items (between-item view), bottom minus the "
            "item's mean\non items with both right and wrong candidates (the within-item contrast a selector uses)",
            fontsize=8,
        )
        fig.tight_layout()
        paths.append(str(_save(fig, folder / "norms_right_vs_wrong.png")))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _json(rep: ReportData) -> str:
    def row(r: MethodRow) -> dict[str, Any]:
        d = {k: getattr(r, k) for k in ("name", "kind", "acc", "lo", "hi", "tokens", "seconds", "ties")}
        d["items"] = len(r.correct)
        d["vs_greedy"] = None if r.vs_greedy is None else r.vs_greedy.__dict__
        d["vs_majority"] = None if r.vs_majority is None else r.vs_majority.__dict__
        return d

    return stored_json(
        {
            "config": rep.config,
            "n_items": rep.n_items,
            "band": rep.band,
            "methods": [row(r) for r in rep.rows],
            "signals": rep.signals,
            "layers": rep.layers,
            "accuracy_vs_n": {k: {str(n): v for n, v in c.items()} for k, c in rep.curves.items()},
            "accuracy_vs_n_subsets": {str(n): v for n, v in rep.curve_sizes.items()},
            "probe": rep.probe,
            "truncation": rep.truncation,
            "notes": rep.notes,
        }
    )


def _write_per_item(rep: ReportData, run: RunData, path: Path) -> None:
    """One row per item, one 0/1 column per method (blank: not run on that item), to re-check any comparison."""
    import csv

    gold = {r.item_id: (r.index, r.gold) for r in run.samples}
    for items in run.gens.values():
        for r in items:
            gold.setdefault(r.item_id, (r.index, r.gold))
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "index", "gold", *(row.name for row in rep.rows)])
        for item_id, (index, g) in sorted(gold.items(), key=lambda kv: kv[1][0]):
            cells = [("" if item_id not in row.correct else int(row.correct[item_id])) for row in rep.rows]
            w.writerow([item_id, index, g, *cells])


def write_report(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    plots: bool = True,
    n_boot: int = 10_000,
    n_subsamples: int = 200,
) -> Path:
    """Compute and write ``report.md``, ``report.json``, ``per_item.csv`` and the plots.

    Args:
        run_dir: the run folder.
        out: the report folder (default ``RUN_DIR/report``).
        plots: draw the PNG plots (matplotlib).
        n_boot: bootstrap resamples.
        n_subsamples: subsets per item and N for accuracy vs N.

    Returns:
        The path of ``report.md``.
    """
    run = load_run(run_dir)
    if not run.samples and not run.gens:
        raise ConfigError(f"{run_dir} holds no finished items yet; let `l2reason eval` run first")
    rep = compute_report(run, n_boot=n_boot, n_subsamples=n_subsamples)
    folder = Path(out) if out is not None else Path(run_dir) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    pics = _plots(rep, folder) if plots else []
    (folder / "report.json").write_text(_json(rep), encoding="utf-8")
    _write_per_item(rep, run, folder / "per_item.csv")
    md = folder / "report.md"
    md.write_text(render_markdown(rep, pics), encoding="utf-8")
    logger.info("wrote %s", md)
    return md
