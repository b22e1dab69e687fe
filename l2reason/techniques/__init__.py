"""The controllers: ALRR, ERSS, static steering, suppression, selection, baselines.

Per-decode-step functions (``alrr_*``, ``erss_step``, ``static_steer``,
``suppress_step``, ``hash_uniform``) are pure fixed-shape tensor functions
over rows (one row = one request/candidate): no ``.item()``, no Python
branching on tensor values, per-row state in NamedTuples, randomness from a
counter-based hash. They compile with ``torch.compile(fullgraph=True)`` and so
survive CUDA-graph capture (see ``docs/techniques.md``, "Step functions and
randomness"). Selection and baselines are post-hoc numpy code; the voting
rules group candidates by the final answer of :mod:`l2reason.techniques.answers`.

Example:
    >>> from l2reason.techniques import ALRRSpec, parse_interventions
    >>> parse_interventions([{"kind": "alrr"}])[0] == ALRRSpec()
    True
"""

from __future__ import annotations

from l2reason.techniques.alrr import (
    ALRRCounters,
    ALRRResult,
    ALRRStep,
    alrr_accept,
    alrr_active,
    alrr_counters_add,
    alrr_counters_init,
    alrr_run,
    alrr_static_accept,
)
from l2reason.techniques.baselines import (
    SELECTORS,
    deepconf_scores,
    select,
    select_deepconf,
    select_majority,
    select_random,
    select_self_certainty,
    select_shortest,
    self_certainty_scores,
)
from l2reason.techniques.erss import (
    ERSSState,
    ERSSStep,
    erss_init,
    erss_params,
    erss_reset,
    erss_step,
)
from l2reason.techniques.rng import (
    STREAM_ERSS,
    STREAM_SUPPRESS,
    hash_uniform,
    request_seed,
)
from l2reason.techniques.selection import (
    DEFAULT_SCORE,
    SCORE_NAMES,
    CandidateSignals,
    Selection,
    group_vote,
    l2_scores,
    select_l2,
    select_l2_vote,
)
from l2reason.techniques.specs import (
    ALRRSpec,
    ERSSSpec,
    InterventionSpec,
    SAEAblateSpec,
    StaticSteerSpec,
    SuppressSpec,
    ThresholdSpec,
    check_vectors,
    parse_interventions,
)
from l2reason.techniques.static_steer import static_steer, steering_vector_from_norms
from l2reason.techniques.suppress import CLAMP_FRACTION, suppress_step

__all__ = [
    "ALRRCounters",
    "ALRRResult",
    "ALRRSpec",
    "ALRRStep",
    "CLAMP_FRACTION",
    "DEFAULT_SCORE",
    "ERSSSpec",
    "ERSSState",
    "ERSSStep",
    "InterventionSpec",
    "SCORE_NAMES",
    "SELECTORS",
    "STREAM_ERSS",
    "STREAM_SUPPRESS",
    "CandidateSignals",
    "Selection",
    "StaticSteerSpec",
    "SAEAblateSpec",
    "SuppressSpec",
    "ThresholdSpec",
    "alrr_accept",
    "alrr_active",
    "alrr_counters_add",
    "alrr_counters_init",
    "alrr_run",
    "alrr_static_accept",
    "check_vectors",
    "deepconf_scores",
    "erss_init",
    "erss_params",
    "erss_reset",
    "erss_step",
    "group_vote",
    "hash_uniform",
    "l2_scores",
    "parse_interventions",
    "request_seed",
    "select",
    "select_deepconf",
    "select_l2",
    "select_l2_vote",
    "select_majority",
    "select_random",
    "select_self_certainty",
    "select_shortest",
    "self_certainty_scores",
    "static_steer",
    "steering_vector_from_norms",
    "suppress_step",
]
