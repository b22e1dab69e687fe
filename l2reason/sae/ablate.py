"""Ablate SAE features inside the running model (the causal test of "reasoning features").

At one decoder layer, every position's residual state ``x`` (prompt and
generated tokens) is replaced by ``x − Σ_{i∈S} f_i(x)·W_dec[i]``: the
features in ``S`` are removed from the state, everything the SAE does not
explain (its error term) is kept. The control is a set of random features
of matched activation mass (:func:`matched_random_features`), so the test
asks whether *these* features matter, not whether removing that much
activation does.

The hook is registered on the backend's decoder layer for the ``with``
block only, before the backend's own hooks (which then read the ablated
state, so reported norms are those of the ablated stream).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from l2reason.errors import ConfigError

__all__ = ["ablate_features", "matched_random_features", "remove_features"]


@torch.no_grad()
def remove_features(sae: Any, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``x − f_S(x) @ W_dec[S]`` for ``x [..., d]`` (computed in float32, returned in ``x``'s dtype)."""
    xf = x.float()
    f = sae.encode(xf)[..., features]  # [..., |S|]
    return (xf - f @ sae.W_dec[features].float()).to(x.dtype)


@contextmanager
def ablate_features(backend: Any, sae: Any, layer: int, features: Sequence[int]) -> Iterator[None]:
    """Within the block, ``backend``'s layer ``layer`` outputs states with ``features`` removed.

    Example:
        >>> with ablate_features(be, sae, 20, [17, 402]):  # doctest: +SKIP
        ...     res = be.generate(req)
    """
    from l2reason.backends.hf.layers import layer_output_tensor, replace_layer_output

    if not features:
        yield
        return
    idx = torch.tensor(sorted({int(i) for i in features}), dtype=torch.long)
    if int(idx.max()) >= sae.cfg.d_sae or int(idx.min()) < 0:
        raise ConfigError(f"feature indices must be in [0, {sae.cfg.d_sae}) (got {features})")

    def hook(_m: Any, _args: Any, output: Any) -> Any:
        h = layer_output_tensor(output)  # [B, q, d]
        return replace_layer_output(output, remove_features(sae, h, idx))

    handle = backend.layers[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def matched_random_features(
    mass: torch.Tensor, chosen: Sequence[int], *, seed: int = 0, exclude: Sequence[int] = ()
) -> list[int]:
    """Random features, one per chosen feature, each of about the same activation mass.

    ``mass[i]`` is feature ``i``'s total (or mean) activation over the stored
    tokens. Candidates are the features outside ``chosen``/``exclude`` sorted by
    mass; for each chosen feature one is drawn at random from the 5 nearest in
    that order (without replacement), so the control removes as much activation
    without being the same features.
    """
    g = torch.Generator().manual_seed(seed)
    banned = {int(i) for i in chosen} | {int(i) for i in exclude}
    pool = [i for i in torch.argsort(mass).tolist() if i not in banned]
    if len(pool) < len(chosen):
        raise ConfigError(f"only {len(pool)} other features to draw {len(chosen)} controls from")
    pool_mass = mass[pool]
    out: list[int] = []
    for c in chosen:
        pos = int(torch.searchsorted(pool_mass.contiguous(), mass[c].reshape(1)).item())
        lo, hi = max(0, pos - 2), min(len(pool), pos + 3)
        window = [j for j in range(lo, hi) if pool[j] not in out]
        while not window:  # widen until something unused is in reach
            lo, hi = max(0, lo - 1), min(len(pool), hi + 1)
            window = [j for j in range(lo, hi) if pool[j] not in out]
        out.append(pool[window[int(torch.randint(len(window), (1,), generator=g))]])
    return out
