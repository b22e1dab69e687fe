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
from l2reason.techniques.sae_ablate import SAEWeights

__all__ = ["ablate_features", "matched_random_features", "remove_features", "sae_weights"]


def sae_weights(sae: Any) -> SAEWeights:
    """A SAELens SAE (standard or TopK) as :class:`~l2reason.techniques.sae_ablate.SAEWeights`.

    A TopK SAE with ``rescale_acts_by_decoder_norm`` scales its pre-activations
    by the decoder row norms ``n`` and decodes with ``W_dec / n``: both are
    folded in here (``W_enc·n``, ``b_enc·n``, ``W_dec / n``), so the plain encode
    gives SAELens' activations and the plain decoder rows its directions.
    Passing an :class:`SAEWeights` returns it unchanged.

    Raises:
        ConfigError: an architecture other than standard/TopK, or input
            normalisation the plain form does not model.
    """
    if isinstance(sae, SAEWeights):
        return sae
    cfg = sae.cfg
    arch = cfg.architecture() if callable(getattr(cfg, "architecture", None)) else getattr(cfg, "architecture", "")
    if arch not in ("standard", "topk"):
        raise ConfigError(f"ablation supports standard and TopK SAEs (this one is {arch!r})")
    if getattr(cfg, "normalize_activations", "none") not in ("none", None):
        raise ConfigError(f"ablation needs an SAE without input normalisation (got {cfg.normalize_activations!r})")
    with torch.no_grad():
        W_enc, b_enc, W_dec = sae.W_enc.float(), sae.b_enc.float(), sae.W_dec.float()
        if arch == "topk" and getattr(cfg, "rescale_acts_by_decoder_norm", False):
            n = W_dec.norm(dim=-1)
            W_enc, b_enc, W_dec = W_enc * n, b_enc * n, W_dec / n[:, None]
        return SAEWeights(
            W_enc=W_enc.detach().clone(),
            b_enc=b_enc.detach().clone(),
            b_dec=sae.b_dec.float().detach().clone(),
            W_dec=W_dec.detach().clone(),
            activation="topk" if arch == "topk" else "relu",
            k=int(getattr(cfg, "k", 0) or 0),
            apply_b_dec_to_input=bool(getattr(cfg, "apply_b_dec_to_input", True)),
        )


@torch.no_grad()
def remove_features(sae: Any, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``x − Σ_{i∈S} f_i(x)·d_i`` for ``x [..., d]`` (float32 math, returned in ``x``'s dtype).

    ``sae``: a SAELens SAE or :class:`SAEWeights`.
    """
    w = sae_weights(sae)
    return w.remove(x, w.check_features(features))


@contextmanager
def ablate_features(backend: Any, sae: Any, layer: int, features: Sequence[int]) -> Iterator[None]:
    """Within the block, ``backend``'s layer ``layer`` outputs states with ``features`` removed.

    ``sae``: a SAELens SAE or :class:`SAEWeights`. The engine plugins do the same
    per request (the ``sae_ablate`` intervention).

    Example:
        >>> with ablate_features(be, sae, 20, [17, 402]):  # doctest: +SKIP
        ...     res = be.generate(req)
    """
    from l2reason.backends.hf.layers import layer_output_tensor, replace_layer_output

    if not features:
        yield
        return
    w = sae_weights(sae)
    idx = w.check_features(list(features))
    if not 0 <= layer < len(backend.layers):
        raise ConfigError(f"layer {layer} does not exist (the model has {len(backend.layers)} layers)")
    w = w.to(next(backend.layers[layer].parameters()).device)

    def hook(_m: Any, _args: Any, output: Any) -> Any:
        h = layer_output_tensor(output)  # [B, q, d]
        return replace_layer_output(output, w.remove(h, idx))

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
