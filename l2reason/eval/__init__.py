"""Evaluation: offline math datasets, answer extraction and statistics.

Example:
    >>> from l2reason.eval import load_dataset, extract_answer, bootstrap_ci
    >>> ds = load_dataset("chain_sum", size=3)
    >>> item = ds.items(1)[0]
    >>> extract_answer("4 + 3 = 7, so the answer is 7."), ds.score("The answer is 7.", item)
    ('7', True)
"""

from __future__ import annotations

from l2reason.eval.answers import (
    answers_equal,
    extract_answer,
    find_numbers,
    normalize_answer,
    parse_number,
)
from l2reason.eval.datasets import (
    DATASETS,
    EVALS_TASKS,
    BasicArithmetic,
    ChainSum,
    Dataset,
    EvalsJSONL,
    GSMSymbolic,
    Item,
    JSONLDataset,
    ReasoningGym,
    load_dataset,
)
from l2reason.eval.stats import (
    accuracy_vs_n,
    bootstrap_ci,
    majority_selector,
    max_score_selector,
    mcnemar,
    paired_bootstrap,
    rankdata,
    roc_auc,
    spearman,
    within_item_auc,
)

__all__ = [
    "DATASETS",
    "EVALS_TASKS",
    "BasicArithmetic",
    "ChainSum",
    "Dataset",
    "EvalsJSONL",
    "GSMSymbolic",
    "Item",
    "JSONLDataset",
    "ReasoningGym",
    "accuracy_vs_n",
    "answers_equal",
    "bootstrap_ci",
    "extract_answer",
    "find_numbers",
    "load_dataset",
    "majority_selector",
    "max_score_selector",
    "mcnemar",
    "normalize_answer",
    "paired_bootstrap",
    "parse_number",
    "rankdata",
    "roc_auc",
    "spearman",
    "within_item_auc",
]
