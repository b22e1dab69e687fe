"""The report's numbers from a stored run: rows, accuracies with CIs, paired comparisons, costs, truncation.

:func:`compute_report` reads top to bottom as the report is built:

1. the rules chosen or fitted on a calibration split, and the items they skip
   (:mod:`~l2reason.eval.report.calibrated`);
2. the selection rows, scored on the stored samples, then the cross-fitted rows;
3. the generation rows, one per pass, with what their interventions did;
4. every row's accuracy with a 95% percentile-bootstrap CI, and the paired
   comparisons against greedy and majority vote on the items both have;
5. the per-candidate signals, per-layer AUCs and norm distributions
   (:mod:`~l2reason.eval.report.signals`) and accuracy vs N
   (:mod:`~l2reason.eval.report.curves`);
6. truncation per pass.

Seeds: row ``i`` (in table order) uses ``seed + i`` for its CI,
``seed + 1000 + i`` / ``seed + 2000 + i`` for its paired tests against
greedy / majority, and the probe comparison ``seed + 3000``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from l2reason.errors import L2ReasonError
from l2reason.eval.harness import RunConfig, RunData, StoredItem, pass_path, suppression_events
from l2reason.eval.methods import AUTO, PROBE, PROBE_VOTE, selection_spec
from l2reason.eval.report.calibrated import (
    CrossProbes,
    HeldOut,
    calibrated_rules,
    cross_fitted_auto,
    cross_fitted_probes,
)
from l2reason.eval.report.curves import accuracy_vs_n
from l2reason.eval.report.data import GREEDY, MAJORITY, PROBE_CV, MethodRow, Paired, ReportData, answers_of, probe_name
from l2reason.eval.report.signals import collect_candidates, layer_table, norm_distributions, signal_table
from l2reason.eval.stats import bootstrap_ci, mcnemar, paired_bootstrap


def compute_report(run: RunData, *, n_boot: int = 10_000, n_subsamples: int = 200, seed: int = 0) -> ReportData:
    """All the report's numbers from a stored run.

    Args:
        run: the run read back by :func:`~l2reason.eval.harness.load_run`.
        n_boot: bootstrap resamples for CIs and paired tests.
        n_subsamples: random subsets per item and N for accuracy vs N.
        seed: seed of the resampling.

    Returns:
        A :class:`~l2reason.eval.report.data.ReportData`.
    """
    from l2reason.signal.band import default_band

    cfg = run.config
    rep = ReportData(config=cfg.model_dump(), n_items=len(run.samples), band=default_band(cfg.num_layers))
    if run.skipped:
        rep.notes.append(f"{run.skipped} corrupt results line(s) were skipped while reading the run")
    auto, probe = calibrated_rules(run, rep.notes)
    samples = [r for r in run.samples if r.result.candidates]
    rows = _selection_rows(samples, cfg, auto, probe, rep.notes)
    probes = CrossProbes()
    if samples and cfg.n > 1:
        probes = _cross_fitted_rows(samples, cfg, rep, rows, n_boot)
    _sampling_cost(rows, samples, cfg.n)
    for name, items in run.gens.items():
        rows[name] = _generation_row(run, name, items, rep.notes)
    _accuracies(rows, n_boot, seed)
    rep.rows = list(rows.values())
    _probe_accuracy(rep, rows, n_boot, seed)
    if samples and GREEDY not in rows:
        rep.notes.append("no greedy pass in this run: add --gen-methods greedy for the comparison against greedy")
    if samples and cfg.n > 1:
        _candidate_sections(rep, samples, cfg, auto, probe, probes, rows, n_subsamples, seed)
    rep.truncation = _truncation([("samples", samples), *run.gens.items()])
    return rep


def _selection_methods(cfg: RunConfig, auto: HeldOut, probe: HeldOut) -> list[str]:
    """The selection rows in table order; the calibrated rules only when reported."""
    calibrated = (AUTO, PROBE, PROBE_VOTE)
    # no sampling pass (n = 0): no selection rows, only the generation passes
    methods = [m for m in cfg.methods if m not in calibrated] if cfg.n > 0 else []
    methods += [AUTO] if auto.rule and AUTO in cfg.methods else []
    return methods + [m for m in (PROBE, PROBE_VOTE) if probe.rule and m in cfg.methods]


def _selection_rows(
    samples: list[StoredItem], cfg: RunConfig, auto: HeldOut, probe: HeldOut, notes: list[str]
) -> dict[str, MethodRow]:
    """The reference rows (``sample@1``, ``oracle@N``) and every selection method scored on the samples.

    A method that fails on some item is noted and left out.
    """
    rows: dict[str, MethodRow] = {}
    if samples:
        for row in (
            MethodRow("sample@1", "reference", {r.item_id: r.correct[0] for r in samples}),
            MethodRow(f"oracle@{cfg.n}", "reference", {r.item_id: any(r.correct) for r in samples}),
        ):
            rows[row.name] = row
    for name in _selection_methods(cfg, auto, probe):
        try:
            rows[name] = _selection_row(name, samples, cfg, auto, probe)
        except L2ReasonError as e:
            notes.append(f"{name}: not scored ({e})")
    return rows


def _selection_row(name: str, samples: list[StoredItem], cfg: RunConfig, auto: HeldOut, probe: HeldOut) -> MethodRow:
    """Method ``name`` on every item it may be scored on (a calibrated rule skips its split)."""
    from l2reason.select import select_result

    row = MethodRow(name, "selection", {})
    for r in samples:
        if name == AUTO and r.item_id in auto.skip:
            continue  # chosen on this item: never scored on it
        if name in (PROBE, PROBE_VOTE) and r.item_id in probe.skip:
            continue  # fitted on this item: never scored on it
        spec = selection_spec(name, auto=auto.rule, seed=cfg.item_seed(r.index))
        sel = select_result(r.result, spec, num_layers=cfg.num_layers, extractor=answers_of(r), probe=probe.rule)
        row.record(r.item_id, bool(r.correct[sel.index]), sel.details)
    return row


def _cross_fitted_rows(
    samples: list[StoredItem], cfg: RunConfig, rep: ReportData, rows: dict[str, MethodRow], n_boot: int
) -> CrossProbes:
    """Adds ``l2-auto-cv`` and the cross-fitted probe rows to ``rows``; returns the probes."""
    cv = cross_fitted_auto(samples, cfg, rep.notes)
    if cv is not None:
        rows[cv.name] = cv
    probes, probe_rows = cross_fitted_probes(samples, cfg, rep, n_boot)
    rows.update((row.name, row) for row in probe_rows)
    return probes


def _pass_cost(items: Sequence[StoredItem]) -> tuple[float, float]:
    """Generated tokens and wall seconds per item of a pass (NaN when it has none)."""
    if not items:
        return float("nan"), float("nan")
    toks = np.mean([r.result.completion_tokens for r in items])
    secs = np.mean([r.seconds for r in items])
    return float(toks), float(secs)


def _sampling_cost(rows: dict[str, MethodRow], samples: list[StoredItem], n: int) -> None:
    """Selection rows share the sampling pass's cost; ``sample@1`` is one sample's share of it."""
    tok_s, sec_s = _pass_cost(samples)
    for row in rows.values():
        if row.kind == "selection" or row.name == f"oracle@{n}":
            row.tokens, row.seconds = tok_s, sec_s
        elif row.name == "sample@1":
            row.tokens, row.seconds = tok_s / max(n, 1), sec_s


def _generation_row(run: RunData, name: str, items: list[StoredItem], notes: list[str]) -> MethodRow:
    """A generation pass's row and cost; ``notes`` gets what its interventions did."""
    row = MethodRow(name, "generation", {r.item_id: r.correct[0] for r in items if r.correct})
    row.tokens, row.seconds = _pass_cost(items)
    _intervention_notes(name, items, notes)
    hits, steps = suppression_events(items)
    if steps:
        notes.append(_suppression_note(run, name, hits, steps))
    return row


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


def _suppression_note(run: RunData, name: str, hits: int, steps: int) -> str:
    """The share of (token, layer) steps a suppression pass suppressed, and the rate a matched pass drew at."""
    msg = f"{name}: suppressed {100 * hits / steps:.2f}% of (token, layer) steps ({hits} of {steps})"
    rate_file = pass_path(run.path, name).with_suffix(".rate.json")
    if rate_file.is_file():
        info = json.loads(rate_file.read_text(encoding="utf-8"))
        msg += (
            f"; random rate {100 * info['rate']:.2f}% matched to {info['source']} "
            f"({info['events']} events over {info['token_layers']} token-layers on {info['items']} items)"
        )
    return msg


def _paired(a: dict[str, bool], b: dict[str, bool], n_boot: int, seed: int) -> Paired | None:
    """``a`` − ``b`` on the items both have: paired bootstrap and exact McNemar (None: no shared item)."""
    common = [k for k in a if k in b]
    if not common:
        return None
    xa = np.array([a[k] for k in common], dtype=float)
    xb = np.array([b[k] for k in common], dtype=float)
    d, lo, hi, p = paired_bootstrap(xa, xb, n_boot=n_boot, seed=seed)
    losses, wins, pm = mcnemar(xa, xb)  # mcnemar(a, b): (a wrong & b right, a right & b wrong)
    return Paired(len(common), d, lo, hi, p, wins, losses, pm)


def _accuracies(rows: dict[str, MethodRow], n_boot: int, seed: int) -> None:
    """Each row's accuracy with its bootstrap CI, and its paired comparisons against greedy and majority."""
    for i, row in enumerate(rows.values()):
        if row.correct:
            row.acc, row.lo, row.hi = bootstrap_ci(
                np.asarray(list(row.correct.values()), dtype=float), n_boot=n_boot, seed=seed + i
            )
    greedy, major = rows.get(GREEDY), rows.get(MAJORITY)
    for i, row in enumerate(rows.values()):
        if greedy is not None and row is not greedy and row.correct:
            row.vs_greedy = _paired(row.correct, greedy.correct, n_boot, seed + 1000 + i)
        if major is not None and row is not major and row.correct:
            row.vs_majority = _paired(row.correct, major.correct, n_boot, seed + 2000 + i)


def _probe_accuracy(rep: ReportData, rows: dict[str, MethodRow], n_boot: int, seed: int) -> None:
    """The accuracy half of "do norms add information?": all features − confidence only, paired."""
    both, conf = rows.get(PROBE_CV), rows.get(probe_name("confidence"))
    if rep.probe and both is not None and conf is not None:
        acc = _paired(both.correct, conf.correct, n_boot, seed + 3000)
        if acc is not None:
            rep.probe["accuracy"].update(acc.__dict__)


def _candidate_sections(
    rep: ReportData,
    samples: list[StoredItem],
    cfg: RunConfig,
    auto: HeldOut,
    probe: HeldOut,
    probes: CrossProbes,
    rows: dict[str, MethodRow],
    n_subsamples: int,
    seed: int,
) -> None:
    """The sections read from the candidates: signals, per-layer AUCs, norm distributions, accuracy vs N."""
    probe_rows = PROBE in rows or PROBE_VOTE in rows
    data = collect_candidates(samples, cfg.num_layers, auto, probe if probe_rows else None, probes)
    rep.signals = signal_table(data)
    rep.layers = layer_table(data)
    rep.norm_dist = norm_distributions(data, rep.band)
    if len(data.band_cands) == len(samples):
        rep.curves, rep.curve_sizes = accuracy_vs_n(
            samples, data.band_cands, probes, cfg, n_subsamples, seed, set(rows)
        )


def _truncation(passes: Sequence[tuple[str, Sequence[StoredItem]]]) -> list[dict[str, Any]]:
    """Per pass: the share of candidates cut off at the token limit, and the accuracy of cut-off vs finished."""
    out = []
    for pname, items in passes:
        fins = [c.finish_reason for r in items for c in r.result.candidates]
        oks = [ok for r in items for ok in r.correct]
        if not fins:
            continue
        cut = np.array([f == "length" for f in fins])
        ok = np.array(oks, dtype=bool)
        out.append(
            {
                "pass": pname,
                "candidates": int(cut.size),
                "truncated": float(cut.mean()),
                "acc_finished": float(ok[~cut].mean()) if (~cut).any() else float("nan"),
                "acc_truncated": float(ok[cut].mean()) if cut.any() else float("nan"),
                "mean_tokens": float(np.mean([c.completion_tokens for r in items for c in r.result.candidates])),
            }
        )
    return out
