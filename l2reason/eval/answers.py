"""Final-answer extraction for the evaluation (re-exported).

The extraction itself is generic, and the voting selectors need it below the
backends, so it lives in :mod:`l2reason.techniques.answers`. This module keeps
the ``l2reason.eval.answers`` names working; dataset-specific answer parsing
is in :mod:`l2reason.eval.datasets`.

Example:
    >>> from l2reason.eval.answers import answers_equal, extract_answer
    >>> answers_equal(extract_answer("so the answer is 0.75."), "3/4")
    True
"""

from __future__ import annotations

from l2reason.techniques import answers as _answers
from l2reason.techniques.answers import *  # noqa: F403  (the same functions, under their old module)

__all__ = list(_answers.__all__)
