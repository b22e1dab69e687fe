"""What the report holds: its rows, its numbers, the names of its own rows, and the stored answers.

Plain dataclasses, filled by :mod:`~l2reason.eval.report.compute` and read by
:mod:`~l2reason.eval.report.tables`, :mod:`~l2reason.eval.report.plots` and
:mod:`~l2reason.eval.report.write`. Accuracies are fractions in [0, 1]; NaN
means "not computable" (rendered as ``–`` and stored as JSON ``null``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from l2reason.eval.harness import StoredItem

GREEDY = "greedy"
MAJORITY = "majority"
CURVE_METHODS = ("majority", "l2:B/T", "l2:z_mean", "self-certainty", "deepconf", "shortest", "l2-probe-cv")
"""The rules drawn in accuracy vs N (those the table shows)."""
AUTO_CV = "l2-auto-cv"
"""Report row: the auto-calibrated ℓ2 selection, 2-fold cross-fitted on the run's own items."""
PROBE_CV = "l2-probe-cv"
"""Report row: the probe (all features), 2-fold cross-fitted on the run's own items, argmax."""
PROBE_VOTE_CV = "l2-probe-vote-cv"
"""Report row: the same cross-fitted probe, probe-weighted answer vote."""
PROBE_ABLATIONS = ("confidence", "l2", "base")
"""Feature sets of the ablation rows ``l2-probe-cv:<set>`` (argmax)."""


def probe_name(feature_set: str) -> str:
    """The report row of a cross-fitted probe on ``feature_set`` (``"both"``: ``l2-probe-cv``)."""
    return PROBE_CV if feature_set == "both" else f"{PROBE_CV}:{feature_set}"


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


def answers_of(r: StoredItem) -> Callable[[str], str | None]:
    """An extractor that returns the stored answers (the text -> answer of this item)."""
    table = {c.text: a for c, a in zip(r.result.candidates, r.answers, strict=True)}

    def extract(text: str) -> str | None:
        if text in table:
            return table[text]
        from l2reason.eval.answers import extract_answer

        return extract_answer(text)

    return extract
