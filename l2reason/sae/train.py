"""Train a SAELens SAE on one layer of an activation store, and load any SAELens SAE from a folder.

Training is SAELens's own ``SAETrainer`` with the store's shuffled batches as
its ``data_provider`` (no language-model runner: the states were collected by
l2reason's backend, from the hooks the norms come from). Held-out records
(every ``holdout_every``-th candidate) are never trained on; the reconstruction
figures are measured on them.

Needs the optional extra: ``pip install 'l2reason[sae]'``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from l2reason.errors import ConfigError
from l2reason.files import check_output_dir
from l2reason.sae.store import ActivationStore, read_json_file

__all__ = [
    "SAETrainSettings",
    "check_sae_for",
    "load_sae",
    "reconstruction_metrics",
    "sae_layer",
    "split_rows",
    "train_sae",
]

log = logging.getLogger(__name__)


def _sae_lens() -> Any:
    try:
        import sae_lens
    except ImportError as e:  # pragma: no cover - the extra is part of `make setup`
        raise ConfigError("SAE training and loading need SAELens: pip install 'l2reason[sae]'") from e
    return sae_lens


@dataclass(frozen=True)
class SAETrainSettings:
    """What :func:`train_sae` trains.

    Args:
        architecture: ``"topk"`` (k largest pre-activations, ReLU'd; no sparsity coefficient
            to tune) or ``"standard"`` (ReLU with an L1 penalty ``l1``).
        d_sae: features (the model's hidden size is ``d_in``).
        k: active features per token (``"topk"``).
        l1: L1 coefficient (``"standard"``).
        lr: Adam learning rate.
        batch_size: tokens per step.
        total_samples: tokens seen in training (epochs = total_samples / training tokens).
        seed: weight initialisation and batch order.
        holdout_every: every n-th record (candidate) is held out for the metrics.
        normalize: SAELens's ``normalize_activations``; ``"expected_average_only_in"`` scales inputs
            to norm sqrt(d_in) while training and folds the factor into the weights at the end.
    """

    architecture: str = "topk"
    d_sae: int = 2048
    k: int = 32
    l1: float = 5.0
    lr: float = 3e-4
    batch_size: int = 512
    total_samples: int = 300_000
    seed: int = 0
    holdout_every: int = 10
    normalize: str = "expected_average_only_in"

    def __post_init__(self) -> None:
        """Every setting checked at once (before the store is read or anything trains).

        Raises:
            ConfigError: naming the setting, its value and what it may be.
        """
        if self.architecture not in ("topk", "standard"):
            raise ConfigError(f"architecture must be 'topk' or 'standard' (got {self.architecture!r})")
        ints = (("d_sae", 1), ("k", 1), ("batch_size", 1), ("total_samples", 1), ("seed", 0), ("holdout_every", 2))
        for name, lo in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name} must be an integer >= {lo} (got {v!r})")
        if self.architecture == "topk" and self.k > self.d_sae:
            raise ConfigError(f"k ({self.k}) must be at most d_sae ({self.d_sae}): a TopK SAE keeps k of its features")
        if self.total_samples < self.batch_size:
            raise ConfigError(
                f"total_samples ({self.total_samples}) is less than one batch ({self.batch_size}): nothing would train"
            )
        for name, positive in (("lr", True), ("l1", False)):
            v = getattr(self, name)
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or v < 0 or (positive and v == 0):
                raise ConfigError(f"{name} must be a finite number {'> 0' if positive else '>= 0'} (got {v!r})")
        if self.normalize not in ("none", "expected_average_only_in"):
            raise ConfigError(f"normalize must be 'none' or 'expected_average_only_in' (got {self.normalize!r})")


def split_rows(store: ActivationStore, holdout_every: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train rows, held-out rows)`` of the unmasked tokens: a record (candidate) is held out whole."""
    rec, _ = store.token_index()
    keep = store.unmasked()
    held = (rec % holdout_every) == 0
    return torch.nonzero(keep & ~held).flatten(), torch.nonzero(keep & held).flatten()


@torch.no_grad()
def reconstruction_metrics(sae: Any, x: torch.Tensor, chunk: int = 4096) -> dict[str, float]:
    """MSE per element, explained variance, L0 and dead features of ``sae`` on ``x [N, d]``.

    Explained variance = 1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the tokens.
    """
    sse = 0.0
    l0 = 0.0
    fired = None
    mean = x.mean(0)
    sst = float(((x - mean) ** 2).sum())
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk]
        f = sae.encode(xb)
        xh = sae.decode(f)
        sse += float(((xb - xh) ** 2).sum())
        l0 += float((f > 0).sum())
        fb = (f > 0).any(0)
        fired = fb if fired is None else fired | fb
    n = len(x)
    return {
        "mse": sse / (n * x.shape[1]),
        "explained_variance": 1.0 - sse / sst if sst > 0 else float("nan"),
        "l0": l0 / n,
        "dead_features": int((~fired).sum()) if fired is not None else 0,
        "tokens": n,
    }


def train_sae(
    store: ActivationStore | str | Path, layer: int, out: str | Path, settings: SAETrainSettings | None = None
) -> dict[str, Any]:
    """Train an SAE with SAELens on ``layer`` of ``store``; save it (SAELens's folder format) to ``out``.

    Returns:
        The report written to ``out/train_report.json``: settings, sizes, seconds, and the
        held-out reconstruction metrics (:func:`reconstruction_metrics`).

    Raises:
        ConfigError: the layer is not in the store, ``out`` cannot be a folder, the store has less than one
            batch of training tokens (all before training), or training diverged (NaN/inf weights: nothing
            is saved).

    Example:
        >>> rep = train_sae("acts", 20, "sae_l20", SAETrainSettings(total_samples=50_000))  # doctest: +SKIP
        >>> rep["holdout"]["explained_variance"]  # doctest: +SKIP
    """
    sl = _sae_lens()
    s = settings or SAETrainSettings()
    st = store if isinstance(store, ActivationStore) else ActivationStore(store)
    if layer not in st.layers:
        raise ConfigError(f"layer {layer!r} is not in the store {st.path} (it has {st.layers})")
    out = check_output_dir(out, "the SAE folder")
    train_rows, held_rows = split_rows(st, s.holdout_every)
    if len(train_rows) < s.batch_size:
        raise ConfigError(
            f"the store has {len(train_rows)} training tokens at layer {layer}, fewer than one batch "
            f"({s.batch_size}): collect more or lower batch_size"
        )
    torch.manual_seed(s.seed)
    sae = _training_sae(sl, s, st, layer)
    cfg = _trainer_config(s, len(train_rows))
    data = st.batches(layer, s.batch_size, seed=s.seed, index=train_rows)
    x_held = st.states(layer)[held_rows]
    init = reconstruction_metrics(sae, x_held) if len(held_rows) else None  # SAELens's initialisation
    t0 = time.perf_counter()
    trainer = sl.SAETrainer(cfg=cfg, sae=sae, data_provider=data)
    trained = trainer.fit()
    seconds = time.perf_counter() - t0
    if not all(bool(torch.isfinite(p).all()) for p in trained.parameters()):
        raise ConfigError(
            f"training diverged: the SAE's weights hold NaN/inf after {s.total_samples} samples at lr {s.lr:g}; "
            "nothing was saved: lower the learning rate"
        )
    trained.save_inference_model(out)
    inference = load_sae(out)
    x_train = st.states(layer)[train_rows[: len(held_rows) or None]]
    report = {
        "layer": layer,
        "store": str(st.path),
        "model_id": st.model_id,
        "settings": asdict(s),
        "train_tokens": len(train_rows),
        "holdout_tokens": len(held_rows),
        "epochs": s.total_samples / max(1, len(train_rows)),
        "seconds": seconds,
        "holdout": reconstruction_metrics(inference, x_held) if len(held_rows) else None,
        "holdout_at_init": init,
        "train_sample": reconstruction_metrics(inference, x_train),
        "sae_lens": sl.__version__,
        "torch": torch.__version__,
    }
    (out / "train_report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


def _training_sae(sl: Any, s: SAETrainSettings, st: ActivationStore, layer: int) -> Any:
    """A fresh SAELens training SAE of ``s.architecture`` for ``layer`` of ``st`` (seed the RNG first)."""
    common = dict(d_in=st.hidden_size, d_sae=s.d_sae, dtype="float32", device="cpu", normalize_activations=s.normalize)
    if s.architecture == "topk":
        sae = sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(k=s.k, **common))
    elif s.architecture == "standard":
        sae = sl.StandardTrainingSAE(sl.StandardTrainingSAEConfig(l1_coefficient=s.l1, **common))
    else:
        raise ConfigError(f"architecture must be 'topk' or 'standard' (got {s.architecture!r})")
    sae.cfg.metadata.model_name = st.model_id
    sae.cfg.metadata.hook_name = f"l2reason.layer.{layer}"  # the residual after decoder layer `layer`
    return sae


def _trainer_config(s: SAETrainSettings, n_train: int) -> Any:
    """SAELens's trainer settings for ``s`` on ``n_train`` training tokens (on the CPU)."""
    from sae_lens.config import SAETrainerConfig

    return SAETrainerConfig(
        total_training_samples=s.total_samples,
        train_batch_size_samples=s.batch_size,
        lr=s.lr,
        lr_end=s.lr / 10,
        lr_decay_steps=max(0, s.total_samples // s.batch_size // 5),  # the last 20% of steps decay to lr/10
        device="cpu",
        n_batches_for_norm_estimate=min(100, max(1, n_train // s.batch_size)),
        dead_feature_window=max(1, 20_000 // s.batch_size),
        feature_sampling_window=max(1, 20_000 // s.batch_size),
    )


def load_sae(path: str | Path, device: str = "cpu") -> Any:
    """Any SAELens SAE saved in a local folder (``cfg.json`` + ``sae_weights.safetensors``).

    The architecture (standard, topk, jumprelu, gated, ...) is read from the folder's config.

    Raises:
        ConfigError: the folder has no SAELens config, its ``cfg.json`` is not JSON or lacks ``d_in``,
            ``d_sae`` or ``dtype``, SAELens cannot load it, or its weights do not fit the config or hold NaN.
    """
    sl = _sae_lens()
    p = Path(path)
    if not (p / "cfg.json").is_file():
        raise ConfigError(f"{p} is not a SAELens SAE folder (no cfg.json); train one with `l2reason sae train`")
    fix = "train the SAE again (`l2reason sae train`) or pass another folder"
    cfg = read_json_file(p / "cfg.json", "the SAE config", fix)
    problem = _cfg_problem(cfg)
    if problem:
        raise ConfigError(f"the SAE config {p / 'cfg.json'} {problem}; {fix}")
    try:
        sae = sl.SAE.load_from_disk(str(p), device=device)
    except Exception as e:  # SAELens raises what it meets (KeyError, ValueError, OSError, safetensors' errors)
        raise ConfigError(f"{p} is not a loadable SAELens SAE ({type(e).__name__}: {str(e)[:200]}); {fix}") from e
    W = getattr(sae, "W_enc", None)
    if W is None or tuple(W.shape) != (cfg["d_in"], cfg["d_sae"]):
        raise ConfigError(f"{p}: the encoder is {None if W is None else tuple(W.shape)}, not d_in x d_sae; {fix}")
    if not all(bool(torch.isfinite(t).all()) for t in sae.parameters()):
        raise ConfigError(f"{p}: the SAE's weights hold NaN/inf; {fix}")
    return sae


_DTYPES = ("float32", "float16", "bfloat16", "float64", "torch.float32", "torch.float16", "torch.bfloat16")


def _cfg_problem(cfg: Any) -> str | None:
    """What an SAE config lacks that loading and the commands need (None: nothing)."""
    if not isinstance(cfg, dict):
        return f"is a JSON {type(cfg).__name__}, not an object"
    for key in ("d_in", "d_sae"):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            return f"has no valid {key} (got {str(v)[:40]})"
    if cfg.get("dtype") not in _DTYPES:
        return f"has no valid dtype (got {str(cfg.get('dtype'))[:40]}; one of {', '.join(_DTYPES[:4])})"
    if not isinstance(cfg.get("architecture", "standard"), str):
        return "has an architecture that is not a string"
    return None


def sae_layer(sae: Any) -> int | None:
    """The store layer an SAE was trained on, from the hook name :func:`train_sae` records
    (``l2reason.layer.<l>``); None for an SAE trained elsewhere."""
    meta = getattr(getattr(sae, "cfg", None), "metadata", None)
    hook = getattr(meta, "hook_name", None) if meta is not None else None
    if isinstance(hook, str) and hook.startswith("l2reason.layer."):
        tail = hook.rsplit(".", 1)[1]
        return int(tail) if tail.isdigit() else None
    return None


def check_sae_for(sae: Any, store: ActivationStore, layer: int) -> None:
    """The SAE reads this store's states at ``layer``: its input width is the store's hidden size and, for an
    SAE that :func:`train_sae` trained, ``layer`` is the layer it was trained on (before any work).

    Raises:
        ConfigError: the layer is not in the store, the widths differ, or the SAE was trained on another layer.
    """
    if layer not in store.layers:
        raise ConfigError(f"layer {layer!r} is not in the store {store.path} (it has {store.layers})")
    d_in = int(sae.W_enc.shape[0])
    if d_in != store.hidden_size:
        raise ConfigError(
            f"the SAE reads {d_in}-dim states, the store {store.path} holds {store.hidden_size}-dim ones "
            f"({store.model_id}): pass the SAE trained on this store's model"
        )
    trained = sae_layer(sae)
    if trained is not None and trained != layer:
        raise ConfigError(
            f"the SAE was trained on layer {trained}, not {layer}: its features mean nothing at layer {layer}; "
            f"pass --layer {trained} or the SAE of layer {layer}"
        )
