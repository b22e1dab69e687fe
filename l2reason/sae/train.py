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
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from l2reason.errors import ConfigError
from l2reason.sae.store import ActivationStore

__all__ = ["SAETrainSettings", "load_sae", "reconstruction_metrics", "split_rows", "train_sae"]

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

    Example:
        >>> rep = train_sae("acts", 20, "sae_l20", SAETrainSettings(total_samples=50_000))  # doctest: +SKIP
        >>> rep["holdout"]["explained_variance"]  # doctest: +SKIP
    """
    sl = _sae_lens()
    from sae_lens.config import SAETrainerConfig

    s = settings or SAETrainSettings()
    st = store if isinstance(store, ActivationStore) else ActivationStore(store)
    train_rows, held_rows = split_rows(st, s.holdout_every)
    if len(train_rows) < s.batch_size:
        raise ConfigError(
            f"the store has {len(train_rows)} training tokens at layer {layer}, fewer than one batch "
            f"({s.batch_size}): collect more or lower batch_size"
        )
    d_in = st.hidden_size
    torch.manual_seed(s.seed)
    common = dict(d_in=d_in, d_sae=s.d_sae, dtype="float32", device="cpu", normalize_activations=s.normalize)
    if s.architecture == "topk":
        sae = sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(k=s.k, **common))
    elif s.architecture == "standard":
        sae = sl.StandardTrainingSAE(sl.StandardTrainingSAEConfig(l1_coefficient=s.l1, **common))
    else:
        raise ConfigError(f"architecture must be 'topk' or 'standard' (got {s.architecture!r})")
    sae.cfg.metadata.model_name = st.model_id
    sae.cfg.metadata.hook_name = f"l2reason.layer.{layer}"  # the residual after decoder layer `layer`
    cfg = SAETrainerConfig(
        total_training_samples=s.total_samples,
        train_batch_size_samples=s.batch_size,
        lr=s.lr,
        lr_end=s.lr / 10,
        lr_decay_steps=max(0, s.total_samples // s.batch_size // 5),  # the last 20% of steps decay to lr/10
        device="cpu",
        n_batches_for_norm_estimate=min(100, max(1, len(train_rows) // s.batch_size)),
        dead_feature_window=max(1, 20_000 // s.batch_size),
        feature_sampling_window=max(1, 20_000 // s.batch_size),
    )
    data = st.batches(layer, s.batch_size, seed=s.seed, index=train_rows)
    x_held = st.states(layer)[held_rows]
    init = reconstruction_metrics(sae, x_held) if len(held_rows) else None  # SAELens's initialisation
    t0 = time.perf_counter()
    trainer = sl.SAETrainer(cfg=cfg, sae=sae, data_provider=data)
    trained = trainer.fit()
    seconds = time.perf_counter() - t0
    out = Path(out)
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


def load_sae(path: str | Path, device: str = "cpu") -> Any:
    """Any SAELens SAE saved in a local folder (``cfg.json`` + ``sae_weights.safetensors``).

    The architecture (standard, topk, jumprelu, gated, ...) is read from the folder's config.

    Raises:
        ConfigError: the folder has no SAELens config.
    """
    sl = _sae_lens()
    p = Path(path)
    if not (p / "cfg.json").is_file():
        raise ConfigError(f"{p} is not a SAELens SAE folder (no cfg.json); train one with `l2reason sae train`")
    return sl.SAE.load_from_disk(str(p), device=device)
