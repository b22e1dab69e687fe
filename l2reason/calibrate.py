"""Collect decode-token norms on a set of prompts and fit a calibration file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from l2reason.backends.base import GenerationRequest, Message, NormSpec, SamplingParams
from l2reason.data import PROBLEMS, SYSTEM_PROMPT
from l2reason.signal.calibration import Calibration, fit_calibration


def collect_norms(
    backend: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 160,
    batch_size: int = 8,
    system: str | None = SYSTEM_PROMPT,
    on_batch: Callable[[int], None] | None = None,
) -> dict[int, torch.Tensor]:
    """Greedy-generate an answer to each prompt and gather every layer's decode-token norms.

    Massive-activation tokens are excluded (the backend masks them).

    Returns:
        ``{layer: 1-D tensor of norms}`` over all prompts.
    """
    per_layer: dict[int, list[torch.Tensor]] = {}
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        reqs = []
        for p in chunk:
            msgs = ([Message(role="system", content=system)] if system else []) + [Message(role="user", content=p)]
            reqs.append(
                GenerationRequest(
                    messages=msgs,
                    sampling=SamplingParams(max_new_tokens=max_new_tokens),
                    norms=NormSpec(layers="all"),
                )
            )
        for res in backend.generate_many(reqs):
            c = res.candidates[0]
            assert c.norms is not None
            arr = torch.from_numpy(c.norms.array())
            keep = ~torch.tensor(c.norms.masked or [False] * arr.shape[0], dtype=torch.bool)
            for i, layer in enumerate(c.norms.layers):
                per_layer.setdefault(layer, []).append(arr[keep, i])
        if on_batch:
            on_batch(len(chunk))
    return {layer: torch.cat(v) for layer, v in per_layer.items()}


def calibrate(
    backend: Any,
    prompts: Sequence[str] | None = None,
    *,
    q: float = 0.95,
    max_new_tokens: int = 160,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> Calibration:
    """Fit a :class:`Calibration` for ``backend``'s model (defaults: the built-in problems)."""
    prompts = list(prompts) if prompts is not None else [p for p, _ in PROBLEMS]
    norms = collect_norms(backend, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, on_batch=on_batch)
    return fit_calibration(
        norms,
        model_id=backend.model_id,
        num_layers=backend.num_layers,
        hidden_size=backend.hidden_size,
        q=q,
        n_prompts=len(prompts),
        weights_sha256=getattr(backend, "weights_sha256", None),
    )
