"""The controllers: ALRR, ERSS, static steering, suppression, selection, baselines.

Per-decode-step functions (``alrr_*``, ``erss_step``, ``static_steer``,
``suppress_step``, ``hash_uniform``) are pure fixed-shape tensor functions
over rows (one row = one request/candidate): no ``.item()``, no Python
branching on tensor values, per-row state in NamedTuples, randomness from a
counter-based hash. They compile with ``torch.compile(fullgraph=True)`` and so
survive CUDA-graph capture (see ``docs/techniques.md``, "Step functions and
randomness"). Selection and baselines are post-hoc numpy code; the voting
rules group candidates by the final answer of :mod:`l2reason.techniques.answers`.

The flat namespace is the union of the controller modules' ``__all__``
(each module lists its public names once, there).

Example:
    >>> from l2reason.techniques import ALRRSpec, parse_interventions
    >>> parse_interventions([{"kind": "alrr"}])[0] == ALRRSpec()
    True
"""

from __future__ import annotations

import importlib

from l2reason.techniques.alrr import *  # noqa: F403
from l2reason.techniques.baselines import *  # noqa: F403
from l2reason.techniques.erss import *  # noqa: F403
from l2reason.techniques.rng import *  # noqa: F403
from l2reason.techniques.selection import *  # noqa: F403
from l2reason.techniques.specs import *  # noqa: F403
from l2reason.techniques.static_steer import *  # noqa: F403
from l2reason.techniques.suppress import *  # noqa: F403

# (by name: the function static_steer hides the module of that name)
_MODULES = ("alrr", "baselines", "erss", "rng", "selection", "specs", "static_steer", "suppress")
__all__ = sorted({name for m in _MODULES for name in importlib.import_module(f"{__name__}.{m}").__all__})
