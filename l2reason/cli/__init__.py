"""The ``l2reason`` command (``app``; the console script ``l2reason = "l2reason.cli:app"``).

One module per command family, each adding its commands to the shared ``app`` of :mod:`._common` (the error
mapping, consoles, model loading and output conventions live there):

- :mod:`.ask`: ``ask``, ``trace``, ``demo``;
- :mod:`.calibrate`: ``calibrate`` (and ``calibrate --select``);
- :mod:`.evaluate`: ``eval``, ``report``;
- :mod:`.models`: ``models``;
- :mod:`.sae`: ``collect``, ``sae ...``, ``vector ...``;
- :mod:`.serve`: ``serve``.

Importing this package loads typer and rich only; each command imports what it needs when it runs.
"""

from __future__ import annotations

# each module registers its commands on import, in this order (the order of --help)
from l2reason.cli import ask, calibrate, evaluate, models, sae, serve  # noqa: F401
from l2reason.cli._common import app

__all__ = ["app"]
