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

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from l2reason.errors import ConfigError
from l2reason.techniques.sae_ablate import SAEWeights

__all__ = [
    "ablate_features",
    "condition_file",
    "export_sae",
    "matched_random_features",
    "read_condition",
    "read_ranked_features",
    "remove_features",
    "sae_weights",
    "save_condition",
]


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


def read_ranked_features(path: str | Path, top: int, d_sae: int | None = None) -> list[int]:
    """The first ``top`` features of ``by_norm`` in a ``features.json`` (``l2reason sae features``), checked.

    Args:
        path: the file.
        top: how many to take (>= 1); a file with fewer gives them all.
        d_sae: the SAE's feature count: every index must be below it (None: not checked).

    Returns:
        Distinct feature indices, in the file's order.

    Raises:
        ConfigError: the file is missing or not JSON, has no ``by_norm`` list of ``{"feature": index}``
            objects, ranks no feature, repeats one, or names one outside the SAE.

    Example:
        >>> read_ranked_features("features/features.json", 10, d_sae=2048)  # doctest: +SKIP
        [589, 1632, 988, 599, 1779, 407, 125, 1622, 586, 889]
    """
    from l2reason.sae.features import check_top
    from l2reason.sae.store import read_json_file

    check_top(top)
    fix = "pass the features.json that `l2reason sae features` wrote"
    data = read_json_file(Path(path), "the features file", fix)
    ranked = data.get("by_norm") if isinstance(data, dict) else None
    if not isinstance(ranked, list):
        raise ConfigError(f"the features file {path} has no 'by_norm' list of ranked features; {fix}")
    if not ranked:
        raise ConfigError(f"the features file {path} ranks no feature ('by_norm' is empty): nothing to ablate")
    chosen: list[int] = []
    for k, f in enumerate(ranked[:top]):
        i = f.get("feature") if isinstance(f, dict) else None
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ConfigError(f"the features file {path}: by_norm[{k}] has no 'feature' index >= 0 ({str(f)[:80]})")
        if d_sae is not None and i >= d_sae:
            raise ConfigError(f"the features file {path}: feature {i} is outside the SAE (features 0..{d_sae - 1})")
        if i in chosen:
            raise ConfigError(f"the features file {path}: feature {i} is ranked twice")
        chosen.append(i)
    return chosen


def export_sae(sae: Any, path: str | Path) -> SAEWeights:
    """Write an SAE as the plain file the engine plugins read (``sae_ablate``'s ``sae``); return its weights.

    Raises:
        ConfigError: the SAE is not standard/TopK (:func:`sae_weights`), or ``path`` cannot be a file
            (a folder, a parent that is a file, a folder that cannot be written).
    """
    from l2reason.files import check_output_file

    w = sae_weights(sae)
    p = check_output_file(path, "the SAE file")
    p.parent.mkdir(parents=True, exist_ok=True)
    w.save(p)
    return w


def condition_file(out: str | Path, name: str) -> Path:
    """Where ``l2reason sae ablate`` keeps one condition's texts (``ablation_<name>.json``)."""
    return Path(out) / f"ablation_{name}.json"


def save_condition(path: Path, data: dict[str, Any]) -> None:
    """Write a condition's file atomically (a crash leaves the old file or the new one, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_condition(path: Path) -> dict[str, Any] | None:
    """A condition's saved file (None: there is none), checked to be what :func:`save_condition` writes.

    Raises:
        ConfigError: the file is torn or not JSON, or lacks the fields a rerun goes on from (layer,
            features, items, texts, complete, correct); the message says to delete it to redo the condition.
    """
    from l2reason.sae.store import read_json_file

    if not path.exists():
        return None
    fix = f"delete {path} to run that condition again"
    d = read_json_file(path, "the saved condition", fix)

    def strs(x: Any) -> bool:
        return isinstance(x, list) and all(isinstance(v, str) for v in x)

    ok = isinstance(d, dict) and isinstance(d.get("layer"), int) and strs(d.get("items")) and strs(d.get("texts"))
    ok = ok and isinstance(d.get("features"), list) and all(isinstance(v, int) for v in d["features"])
    ok = ok and isinstance(d.get("complete", True), bool) and len(d["texts"]) <= len(d["items"])
    if ok and d.get("complete", True):
        c = d.get("correct")
        ok = isinstance(c, list) and all(isinstance(v, bool) for v in c) and len(c) == len(d["texts"])
    if not ok:
        raise ConfigError(f"the saved condition {path} is not one `l2reason sae ablate` wrote; {fix}")
    return d


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
    outside = [int(i) for i in [*chosen, *exclude] if not 0 <= int(i) < len(mass)]
    if outside:
        raise ConfigError(f"features {outside} are outside the SAE (features 0..{len(mass) - 1})")
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
