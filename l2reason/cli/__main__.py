"""``python -m l2reason.cli ...`` runs the ``l2reason`` command."""

from l2reason.cli import app

app()
