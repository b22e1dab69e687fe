"""Steering vectors from the model's own states: contrastive pairs (CAA) and high- minus low-norm states.

Both are saved as JSON ``{layer: [d floats]}``, the file ``static-steer``
(``l2reason eval --gen-methods 'static-steer:vectors=v.json,alpha=4'``) and
``L2Steer(mode="static", vectors=...)`` read.

- **CAA** (contrastive activation addition, Rimsky et al. 2024): for each pair
  of prompts (positive, negative), the residual state at the last prompt
  position; the vector is ``mean(positive) − mean(negative)`` per layer.
  The states come from the backend's ``collect`` (``positions="last"`` with
  one greedy token: decode step 1 is the last prompt position).
- **Norm split**: from an activation store, ``mean(states with ‖x‖ > τ) −
  mean(the rest)`` per layer (:func:`~l2reason.techniques.static_steer.steering_vector_from_norms`),
  τ the ``quantile`` of the layer's stored norms.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from l2reason.errors import ConfigError
from l2reason.files import read_text_file
from l2reason.sae.store import ActivationStore
from l2reason.techniques.static_steer import steering_vector_from_norms

__all__ = ["caa_vectors", "load_pairs", "mean_difference", "norm_split_vectors", "save_vectors"]


def mean_difference(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``mean(pos) − mean(neg)`` over the first axis, in float32.

    Args:
        pos: ``[N, ...]`` states of the positive prompts.
        neg: ``[M, ...]`` states of the negative prompts (same trailing shape).

    Example:
        >>> mean_difference(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])).tolist()
        [2.0, -1.0]
    """
    if len(pos) == 0 or len(neg) == 0:
        raise ConfigError("CAA needs at least one positive and one negative state")
    if pos.shape[1:] != neg.shape[1:]:
        raise ConfigError(f"positive states {tuple(pos.shape)} and negative {tuple(neg.shape)} differ in shape")
    return pos.float().mean(0) - neg.float().mean(0)


def load_pairs(path: str | Path) -> list[tuple[str, str]]:
    """Read a JSONL file of ``{"positive": str, "negative": str}`` lines (raw prompt texts, no chat template).

    Raises:
        ConfigError: a line is not such an object (the message names the line).
    """
    pairs = []
    for n, line in enumerate(read_text_file(Path(path), "CAA pairs file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{n}: not JSON ({e.msg})") from e
        if not (
            isinstance(row, dict) and isinstance(row.get("positive"), str) and isinstance(row.get("negative"), str)
        ):
            raise ConfigError(f'{path}:{n}: expected {{"positive": "...", "negative": "..."}}')
        if not row["positive"].strip() or not row["negative"].strip():
            raise ConfigError(f"{path}:{n}: positive and negative must be non-empty")
        pairs.append((row["positive"], row["negative"]))
    if not pairs:
        raise ConfigError(f"{path}: no pairs")
    return pairs


def _last_states(backend: Any, prompts: Sequence[str], layers: list[int], batch_size: int) -> torch.Tensor:
    """``[N, n_layers, d]`` float32 states at the last position of each raw prompt."""
    from l2reason.backends.base import CollectSpec, GenerationRequest, SamplingParams

    out = []
    for i in range(0, len(prompts), batch_size):
        reqs = [
            GenerationRequest(
                prompt=p,
                sampling=SamplingParams(max_new_tokens=1),
                norms=None,
                collect=CollectSpec(layers=layers, positions="last"),
            )
            for p in prompts[i : i + batch_size]
        ]
        for res in backend.generate_many(reqs):
            st = res.candidates[0].states
            assert st is not None and st.array is not None
            out.append(torch.from_numpy(st.array).float())
    return torch.stack(out)


def caa_vectors(
    backend: Any, pairs: Sequence[tuple[str, str]], layers: Any, batch_size: int = 8
) -> dict[int, torch.Tensor]:
    """CAA vectors ``{layer: [d]}``: the mean last-position state of the positives minus the negatives'.

    Example:
        >>> v = caa_vectors(be, [("I love it", "I hate it")], [20])  # doctest: +SKIP
    """
    from l2reason.backends.validate import distinct_layers

    resolved = distinct_layers(layers, backend.num_layers, "layers")
    pos = _last_states(backend, [p for p, _ in pairs], resolved, batch_size)
    neg = _last_states(backend, [n for _, n in pairs], resolved, batch_size)
    diff = mean_difference(pos, neg)  # [n_layers, d]
    return {layer: diff[j] for j, layer in enumerate(resolved)}


def norm_split_vectors(
    store: ActivationStore, layers: Sequence[int], quantile: float = 0.95
) -> dict[int, torch.Tensor]:
    """``{layer: mean(high-norm states) − mean(the rest)}``, high = norm above the layer's ``quantile``.

    Args:
        store: the activation store.
        layers: layer indices of the store (each once).
        quantile: in (0, 1).

    Raises:
        ConfigError: ``layers`` is not a non-empty list of distinct layers the store holds (``"band"`` is
            not one: name the store's layers), a quantile outside (0, 1), or a layer whose tokens all fall
            on one side of the split.
    """
    from l2reason.sae.features import check_quantile

    check_quantile(quantile)
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise ConfigError(f"layers must be layer indices of the store (it has {store.layers}), got {layers!r}")
    if len(set(layers)) != len(layers):
        raise ConfigError(f"layers names a layer twice: {list(layers)}")
    missing = [x for x in layers if x not in store.layers]
    if missing:
        raise ConfigError(f"layers {missing} are not in the store {store.path} (it has {store.layers})")
    keep = store.unmasked()
    out = {}
    for layer in layers:
        x = store.states(layer)[keep]
        n = x.norm(dim=-1)
        tau = float(torch.quantile(n, quantile))
        out[layer] = steering_vector_from_norms(x, n, tau)
    return out


def save_vectors(vectors: dict[int, torch.Tensor], path: str | Path) -> Path:
    """Write ``{layer: [floats]}`` JSON (the static-steer / L2Steer vector file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({str(k): [float(v) for v in vec.tolist()] for k, vec in vectors.items()}), encoding="utf-8")
    return p
