"""The report's calibrated rows: rules chosen or fitted on labelled items, scored only on other items.

- ``l2-auto`` / ``l2-probe`` / ``l2-probe-vote`` come from the model's
  calibration file (snapshot in the run config); :func:`calibrated_rules`
  finds the run items they were chosen or fitted on, which the report skips.
- ``l2-auto-cv`` (:func:`cross_fitted_auto`) and ``l2-probe-cv`` with its
  vote and ablation rows (:func:`cross_fitted_probes`) need no calibration
  file: the run's items are split by index parity and each half is scored by
  a choice or probe made on the other half, so every item is scored once, by
  a rule that never saw it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from l2reason.errors import L2ReasonError
from l2reason.eval.harness import RunConfig, RunData, StoredItem
from l2reason.eval.methods import AUTO, PROBE, PROBE_VOTE, selection_spec
from l2reason.eval.report.data import (
    AUTO_CV,
    PROBE_ABLATIONS,
    PROBE_CV,
    PROBE_VOTE_CV,
    MethodRow,
    ReportData,
    answers_of,
    probe_name,
)


@dataclass
class HeldOut:
    """A calibration-file rule (``l2-auto``'s choice or the fitted probe) and the run items it must skip.

    Args:
        rule: the rule to score (None: not reported).
        skip: run items it was chosen or fitted on (never scored on them).
        note: why it is not reported, or on how many items it is.
    """

    rule: dict[str, Any] | None = None
    skip: set[str] = field(default_factory=set)
    note: str | None = None


# The notes of each rule: no recorded split / every run item in it / some run items in it.
_AUTO_NOTES = (
    "l2-auto not reported: the calibration file does not record its calibration split",
    "l2-auto not reported: all {n} items were in its calibration split; "
    "evaluate on a disjoint split (another --offset or seed)",
    "l2-auto is scored on the {k} items outside its calibration split "
    "({n} of this run's items were in it, e.g. {first}); its Δ columns compare on those items only",
)
_PROBE_NOTES = (
    "l2-probe not reported: the probe does not record the items it was fitted on",
    "l2-probe not reported: all {n} items were in its calibration split; evaluate on other items",
    "l2-probe is scored on the {k} items outside the split it was fitted on "
    "({n} of this run's items were in it); its Δ columns compare on those items only",
)


def _held_out(run: RunData, rule: dict[str, Any] | None, fit_ids: set[str], notes: tuple[str, str, str]) -> HeldOut:
    """``rule`` and the run items among ``fit_ids``; not reported when no split is recorded or it covers the run."""
    if not rule:
        return HeldOut()
    if not fit_ids:
        return HeldOut(note=notes[0])
    overlap = {r.item_id for r in run.samples if r.item_id in fit_ids}
    if overlap and len(overlap) == len(run.samples):
        return HeldOut(None, overlap, notes[1].format(n=len(overlap)))
    if overlap:
        k, first = len(run.samples) - len(overlap), sorted(overlap)[0]
        return HeldOut(rule, overlap, notes[2].format(k=k, n=len(overlap), first=first))
    return HeldOut(rule)


def calibrated_rules(run: RunData, notes: list[str]) -> tuple[HeldOut, HeldOut]:
    """``l2-auto``'s choice and the fitted probe of the run config, each with the run items it must skip.

    Appends to ``notes`` why a rule is not reported (or on how many items it
    is), and that a rule the run asks for had nothing in the calibration file.
    """
    cfg = run.config
    split = (cfg.auto_selection or {}).get("split", {})
    auto = _held_out(run, cfg.auto_selection, set(split.get("item_ids", [])), _AUTO_NOTES)
    info = (cfg.probe or {}).get("info") or {}
    fit_ids = set(info.get("item_ids") or []) | set((info.get("split") or {}).get("item_ids") or [])
    probe = _held_out(run, cfg.probe, fit_ids, _PROBE_NOTES)
    notes.extend(n for n in (auto.note, probe.note) if n)
    if AUTO in cfg.methods and not auto.rule and not auto.note:
        notes.append("l2-auto not reported: no chosen selection in the calibration file when the run started")
    if any(m in cfg.methods for m in (PROBE, PROBE_VOTE)) and not probe.rule and not probe.note:
        notes.append("l2-probe not reported: no fitted probe in the calibration file when the run started")
    return auto, probe


def cross_fitted_auto(samples: list[StoredItem], cfg: RunConfig, notes: list[str]) -> MethodRow | None:
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
            choice = choose_selection(folds[1 - f], cfg.num_layers)
        except L2ReasonError as e:
            notes.append(f"{AUTO_CV}: not scored ({e})")
            return None
        pick = "highest" if choice.get("direction", "high") == "high" else "lowest"
        picks.append(f"layers {choice['layers']} {pick} {choice['score']} (within AUC {choice['value']:.3f})")
        for r in folds[f]:
            spec = selection_spec(AUTO, auto=choice, seed=cfg.item_seed(r.index))
            sel = select_result(r.result, spec, num_layers=cfg.num_layers, extractor=answers_of(r))
            row.correct[r.item_id] = bool(r.correct[sel.index])
    notes.append(
        f"{AUTO_CV}: band and score chosen on the odd-index items and scored on the even ones ({picks[0]}), "
        f"and the reverse ({picks[1]})"
    )
    return row


@dataclass
class CrossProbes:
    """The cross-fitted probes of a run.

    Args:
        inputs: item id -> the item's probe inputs (:class:`~l2reason.eval.probe.ItemInputs`, every layer).
        fits: feature set (``"both"`` and :data:`PROBE_ABLATIONS`) -> :class:`~l2reason.eval.probe.CrossFit`.
    """

    inputs: dict[str, Any] = field(default_factory=dict)
    fits: dict[str, Any] = field(default_factory=dict)


def restrict_cands(it: Any, layers: list[int]) -> list[Any]:
    """The candidates of probe inputs ``it`` on ``layers`` only (what a probe fitted on them reads)."""
    from l2reason.eval.probe import _restrict

    return _restrict(it, list(layers))


def cross_fitted_probes(
    samples: list[StoredItem], cfg: RunConfig, rep: ReportData, n_boot: int
) -> tuple[CrossProbes, list[MethodRow]]:
    """Cross-fitted probe rows: ``l2-probe-cv`` (argmax), ``l2-probe-vote-cv`` and the ablations.

    Returns the probes and the rows. ``rep.probe`` receives the "do norms add
    information?" comparison (its accuracy half is added with the other paired
    tests, in :func:`~l2reason.eval.report.compute.compute_report`);
    ``rep.notes`` why a row is not scored and what each fold's probe weighs most.
    """
    from l2reason.eval.probe import item_inputs

    try:
        inputs = [item_inputs(r) for r in samples]
    except L2ReasonError as e:
        rep.notes.append(f"{PROBE_CV}: not scored ({e})")
        return CrossProbes(), []
    probes = CrossProbes({it.item_id: it for it in inputs}, _fit_probes(inputs, rep.notes))
    rows: list[MethodRow] = []
    for fs, cf in probes.fits.items():
        rules = [("l2-probe", probe_name(fs))] + ([("l2-probe-vote", PROBE_VOTE_CV)] if fs == "both" else [])
        for method, name in rules:
            try:
                rows.append(_probe_row(method, name, samples, cf, probes.inputs, cfg))
            except L2ReasonError as e:
                rep.notes.append(f"{name}: not scored ({e})")
    if "both" in probes.fits:
        rep.notes.append(_fold_note(probes.fits["both"]))
    rows_by = {r.name: r for r in rows}
    if PROBE_CV in rows_by and probe_name("confidence") in rows_by:
        rep.probe = _auc_comparison(rows_by, probes, n_boot)
    return probes, rows


def _fit_probes(inputs: list[Any], notes: list[str]) -> dict[str, Any]:
    """Feature set -> its cross-fit; a set that cannot be fitted is noted and left out."""
    from l2reason.eval.probe import cross_fit

    fits: dict[str, Any] = {}
    for fs in ("both", *PROBE_ABLATIONS):
        try:
            fits[fs] = cross_fit(inputs, fs)
        except L2ReasonError as e:
            notes.append(f"{probe_name(fs)}: not scored ({e})")
    return fits


def _probe_row(
    method: str, name: str, samples: list[StoredItem], cf: Any, inputs: dict[str, Any], cfg: RunConfig
) -> MethodRow:
    """Row ``name``: rule ``method`` with the cross-fit ``cf``'s probe on every item it scored."""
    from l2reason.backends.base import SelectionSpec
    from l2reason.select import select_candidates

    row = MethodRow(name, "selection", {})
    for r in samples:
        if r.item_id not in cf.scores:
            continue
        pr = cf.probe_for(r.item_id)  # fitted on the other half: never on this item
        cands = restrict_cands(inputs[r.item_id], pr.layers)
        spec = SelectionSpec(method=method, seed=cfg.item_seed(r.index))
        sel = select_candidates(cands, pr.layers, spec, probe=pr)
        row.record(r.item_id, bool(r.correct[sel.index]), sel.details)
    return row


def _fold_note(cf: Any) -> str:
    """Each fold's penalty and largest effects (logit per SD of a feature)."""
    picks = []
    for fold, half in zip(cf.folds, ("even", "odd"), strict=True):
        top = fold.probe.top_effects(5)
        picks.append(
            f"scored the {half}-index items with penalty {fold.probe.l2:g} "
            f"(largest effects, logit per SD: {', '.join(f'{n} {w:+.2f}' for n, w in top)})"
        )
    return f"{PROBE_CV}: a probe fitted on the other half of the items " + "; ".join(picks)


def _auc_comparison(rows_by: dict[str, MethodRow], probes: CrossProbes, n_boot: int) -> dict[str, Any]:
    """All features vs confidence only: the within-item AUC difference with its item-bootstrap CI."""
    from l2reason.eval.probe import paired_auc_bootstrap

    a, b = rows_by[PROBE_CV].correct, rows_by[probe_name("confidence")].correct
    common = [k for k in a if k in b]
    auc = paired_auc_bootstrap(
        [probes.fits["both"].scores[k] for k in common],
        [probes.fits["confidence"].scores[k] for k in common],
        [probes.inputs[k].labels for k in common],
        n_boot=n_boot,
        seed=7,
    )
    return {"accuracy": {"a": PROBE_CV, "b": probe_name("confidence"), "items": len(common)}, "auc": auc}
