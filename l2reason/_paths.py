"""Where l2reason keeps files it makes (converted models, calibration files).

Everything lives under one cache root: ``$L2REASON_CACHE`` when set, else the
platform's user cache dir (``~/.cache/l2reason`` on Linux).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ENV_CACHE = "L2REASON_CACHE"


def cache_dir() -> Path:
    """The cache root (created on demand)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        root = Path(env).expanduser()
    else:
        from platformdirs import user_cache_dir

        root = Path(user_cache_dir("l2reason"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def safe_name(model_id: str) -> str:
    """A model id as a file-system-safe name (``Qwen/Qwen2.5`` -> ``Qwen--Qwen2.5``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", model_id).strip("-") or "model"
