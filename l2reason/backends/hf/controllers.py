"""Adapters from the pure per-step technique functions to the HF backend's hooks."""

from __future__ import annotations

from typing import Any

CONTROLLERS: dict[str, Any] = {}
