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

Where each part lives:

- :mod:`~l2reason.eval.report.compute`: :func:`compute_report`, the numbers
  (rows, CIs, paired comparisons, costs, truncation);
  :mod:`~l2reason.eval.report.calibrated` the calibrated and cross-fitted
  rows, :mod:`~l2reason.eval.report.signals` the AUCs and norm
  distributions, :mod:`~l2reason.eval.report.curves` accuracy vs N;
- :mod:`~l2reason.eval.report.data`: the dataclasses they fill and the names of the report's own rows;
- :mod:`~l2reason.eval.report.tables`: the markdown (:func:`render_markdown`);
- :mod:`~l2reason.eval.report.plots`: the PNGs (matplotlib, imported only to draw);
- :mod:`~l2reason.eval.report.write`: :func:`write_report`, the report folder.

Example:
    >>> from l2reason.eval.report import write_report
    >>> write_report("runs/gsm")  # doctest: +SKIP
    PosixPath('runs/gsm/report/report.md')
"""

from __future__ import annotations

from l2reason.eval.report.compute import compute_report
from l2reason.eval.report.data import (
    AUTO_CV,
    CURVE_METHODS,
    GREEDY,
    MAJORITY,
    PROBE_ABLATIONS,
    PROBE_CV,
    PROBE_VOTE_CV,
    MethodRow,
    Paired,
    ReportData,
    answers_of,
)
from l2reason.eval.report.signals import candidate_scores, layer_stats
from l2reason.eval.report.tables import render_markdown, reproduce_command
from l2reason.eval.report.write import write_report

# The names these had in the single-module report (benchmarks/layer_auc.py imports them from here).
_answers_of = answers_of
_layer_stats = layer_stats
_signals = candidate_scores

__all__ = [
    "AUTO_CV",
    "CURVE_METHODS",
    "GREEDY",
    "MAJORITY",
    "PROBE_ABLATIONS",
    "PROBE_CV",
    "PROBE_VOTE_CV",
    "MethodRow",
    "Paired",
    "ReportData",
    "compute_report",
    "render_markdown",
    "reproduce_command",
    "write_report",
]
