"""Looking inside the model: activation stores, SAELens SAEs, the norm bound, reasoning features, steering vectors.

The submodules that need SAELens (``train``, ``bound``, ``features``) import
it only when called; install it with ``pip install 'l2reason[sae]'``.
``import l2reason`` and ``import l2reason.sae`` load neither SAELens nor
matplotlib.
"""

from __future__ import annotations

__all__: list[str] = []
