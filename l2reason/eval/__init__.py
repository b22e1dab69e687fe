"""Evaluation: offline math datasets, answer extraction and statistics.

Example:
    >>> from l2reason.eval import load_dataset, extract_answer, bootstrap_ci
    >>> ds = load_dataset("chain_sum", size=3)
    >>> item = ds.items(1)[0]
    >>> extract_answer("4 + 3 = 7, so the answer is 7."), ds.score("The answer is 7.", item)
    ('7', True)

The namespace is the union of the three modules' ``__all__`` (each module
lists its public names once, there).
"""

from __future__ import annotations

from l2reason.eval import answers, datasets, stats
from l2reason.eval.answers import *  # noqa: F403
from l2reason.eval.datasets import *  # noqa: F403
from l2reason.eval.stats import *  # noqa: F403

__all__ = sorted({*answers.__all__, *datasets.__all__, *stats.__all__})
