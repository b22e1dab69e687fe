"""Auto-calibrated selection: choose the layer band and ℓ2 score on labelled samples.

``l2reason calibrate --select`` samples N candidates per item of a labelled
*calibration split* (through the evaluation harness, so it resumes too), then
scores every (layer band, ℓ2 score) pair by how well it separates right from
wrong candidates **of the same item** (within-item AUC: the quantity that
matters for picking one of N), ties broken by argmax-selection accuracy, then
by preferring the default band. The winner is written into the model's
calibration file (``Calibration.with_selection``) together with the ids of
the calibration items, so an evaluation can prove it reports the choice only on
a *disjoint* test split (``l2-auto`` in the report, beside the fixed default
band ``l2:<score>``).

Bands searched: the default band, and every contiguous window of width 1, 3
and 5 over all layers. τ is the per-item pooled τ (Q3 + 1.5·IQR of the item's
candidates), as in the evaluation, so the choice does not depend on a
calibration set's absolute norm level.

Example:
    >>> from l2reason.eval.autocal import choose_selection
    >>> choice = choose_selection(run.samples, num_layers=24)  # doctest: +SKIP
    >>> choice["layers"], choice["score"]  # doctest: +SKIP
    ([14, 15, 16], 'z_mean')
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from l2reason.errors import CalibrationError, ConfigError
from l2reason.eval.harness import RunConfig, StoredItem, run_eval
from l2reason.eval.stats import within_item_auc

if TYPE_CHECKING:
    from l2reason.signal.calibration import Calibration

__all__ = ["BAND_WIDTHS", "calibrate_select", "candidate_bands", "choose_selection"]

logger = logging.getLogger(__name__)

BAND_WIDTHS = (1, 3, 5)  # window widths searched; 5 = the default band's width on a 24-layer model


def candidate_bands(num_layers: int, widths: Sequence[int] = BAND_WIDTHS) -> list[list[int]]:
    """The default band first, then every contiguous window of each width.

    Example:
        >>> candidate_bands(4, widths=(3,))
        [[2], [0, 1, 2], [1, 2, 3]]
    """
    from l2reason.signal.band import default_band

    bands = [default_band(num_layers)]
    for w in widths:
        for lo in range(0, num_layers - w + 1):
            band = list(range(lo, lo + w))
            if band not in bands:
                bands.append(band)
    return bands


def _item_arrays(item: StoredItem) -> tuple[list[Any], list[int], np.ndarray]:
    """Selector inputs over all captured layers, those layers, and the pooled τ per layer."""
    from l2reason.select import candidate_signals, pooled_tau

    c0 = item.result.candidates[0]
    layers = c0.norms.layers if c0.norms is not None else []
    table = {c.text: a for c, a in zip(item.result.candidates, item.answers, strict=True)}
    cands, used = candidate_signals(item.result, layers=layers, extractor=lambda t: table.get(t))
    return cands, used, pooled_tau(cands)


def choose_selection(
    samples: Sequence[StoredItem],
    num_layers: int,
    *,
    scores: Sequence[str] | None = None,
    widths: Sequence[int] = BAND_WIDTHS,
    directions: Sequence[str] = ("high", "low"),
) -> dict[str, Any]:
    """Pick the (band, score) with the best within-item AUC on labelled samples.

    Args:
        samples: stored items of the calibration split (N > 1 candidates each,
            norms over all layers, ``correct`` labels).
        num_layers: the model's depth.
        scores: ℓ2 scores to try (default: all of ``SCORE_NAMES``).
        widths: band widths to try besides the default band.
        directions: ``"high"`` (pick the highest score, the paper's rule)
            and/or ``"low"`` (the lowest: the signal inverted on this model).

    Returns:
        ``{"method": "l2", "score", "layers", "direction", "tau": "pooled", "metric":
        "within_auc", "value", "accuracy", "default_band": {...}, "pairs",
        "table": [top 10 rows]}``.

    Raises:
        ConfigError: no item has both right and wrong candidates (nothing to learn from).
    """
    from l2reason.techniques.selection import SCORE_NAMES

    scores = list(scores or SCORE_NAMES)
    prepared = _labelled_items(samples)
    rows = [
        row
        for band in candidate_bands(num_layers, widths)
        for score in scores
        for row in _band_rows(prepared, band, score, directions)
    ]
    if not rows:
        raise ConfigError("the calibration samples carry no per-layer norms; re-run with norms over all layers")
    return _ranked_choice(rows)


_Prepared = tuple[list[Any], list[int], np.ndarray, np.ndarray]  # selector inputs, their layers, τ per layer, labels


def _labelled_items(samples: Sequence[StoredItem]) -> list[_Prepared]:
    """Each item with N > 1 candidates as :func:`_item_arrays` plus its labels.

    Raises:
        ConfigError: no item has both right and wrong candidates.
    """
    prepared = []
    for r in samples:
        if len(r.result.candidates) < 2:
            continue
        cands, used, tau = _item_arrays(r)
        prepared.append((cands, used, tau, np.asarray(r.correct, dtype=bool)))
    mixed = [p for p in prepared if p[3].any() and not p[3].all()]
    if not mixed:
        raise ConfigError(
            "no calibration item has both right and wrong candidates, so no band can be chosen; "
            "use more items, a larger N or a higher temperature"
        )
    return prepared


def _band_rows(
    prepared: list[_Prepared], band: list[int], score: str, directions: Sequence[str]
) -> list[dict[str, Any]]:
    """One table row per direction for ``score`` on ``band``: within-item AUC, its pairs, argmax accuracy.

    Items are used up to the first one whose norms lack a layer of ``band``; none at all gives no rows.
    """
    from dataclasses import replace

    from l2reason.techniques.selection import l2_scores

    per_item: list[tuple[np.ndarray, np.ndarray]] = []
    for cands, used, tau, y in prepared:
        if not all(layer in used for layer in band):
            break
        cols = [used.index(layer) for layer in band]
        sub = [replace(c, band_norms=c.band_norms[:, cols]) for c in cands]
        s = l2_scores(sub, tau[cols], score)
        keep = np.isfinite(s)
        if keep.any():
            per_item.append((s[keep], y[keep]))
    if not per_item:
        return []
    rows = []
    for direction in directions:
        sign = 1.0 if direction == "high" else -1.0
        s_in = [sign * s for s, _ in per_item]
        y_in = [y for _, y in per_item]
        hits = [bool(y[int(np.argmax(s))]) for s, y in zip(s_in, y_in, strict=True)]
        auc, pairs = within_item_auc(s_in, y_in)
        rows.append(
            {
                "layers": band,
                "score": score,
                "direction": direction,
                "value": auc,
                "pairs": pairs,
                "accuracy": float(np.mean(hits)),
            }
        )
    return rows


def _ranked_choice(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`choose_selection`'s result from its table (the first row's band is the default band).

    Rows rank by AUC, then accuracy, then the default band, then direction ``"high"``; ``rows`` is sorted so.
    """
    default = rows[0]["layers"]
    rows.sort(
        key=lambda r: (
            -np.nan_to_num(r["value"], nan=-1.0),
            -r["accuracy"],
            r["layers"] != default,
            r["direction"] != "high",
        )
    )
    best = rows[0]
    default_rows = [r for r in rows if r["layers"] == default]
    default_best = max(default_rows, key=lambda r: np.nan_to_num(r["value"], nan=-1.0)) if default_rows else None
    return {
        "method": "l2",
        "score": best["score"],
        "layers": best["layers"],
        "direction": best["direction"],
        "tau": "pooled",
        "metric": "within_auc",
        "value": float(best["value"]),
        "accuracy": best["accuracy"],
        "pairs": best["pairs"],
        "default_band": default_best,
        "table": rows[:10],
    }


def calibrate_select(
    backend: Any,
    *,
    dataset: str = "gsm_symbolic:seed=7",
    limit: int = 40,
    offset: int = 0,
    n: int = 8,
    max_new_tokens: int = 512,
    temperature: float = 0.7,
    seed: int = 0,
    batch_items: int = 2,
    run_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    model: str = "default",
    show_progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Sample a calibration split, choose the selection and fit the probe, write both into the calibration file.

    The probe (``l2-probe``, :mod:`l2reason.techniques.probe`) is fitted on
    the same samples with every feature (``both``) and stored in the file's
    ``probe`` section with the split's item ids.

    If the model has no calibration file yet, one is fitted from the same
    samples' decode-token norms (every layer, massive activations excluded).

    Args:
        backend: the backend of the model.
        dataset: the calibration split's dataset (use a seed or offset that the
            evaluation will not use).
        limit, offset: which items.
        n: samples per item.
        max_new_tokens, temperature, seed, batch_items: as in ``l2reason eval``.
        run_dir: where the samples are stored (default ``runs/calibrate-select``).
        out: calibration file (default: the model's file in the cache).
        model: the model spec (recorded only).
        show_progress: draw the progress bar.

    Returns:
        ``(calibration file, chosen selection dict)``.
    """
    from l2reason.signal.calibration import Calibration, default_calibration_path

    run_dir = Path(run_dir or "runs/calibrate-select")
    cfg = RunConfig(
        dataset=dataset, model=model, model_id=backend.model_id, num_layers=backend.num_layers, limit=limit,
        offset=offset, n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, methods=[],
        gen_methods=[], batch_items=batch_items,
    )  # fmt: skip
    sizes = {
        "expected_model_id": backend.model_id,
        "expected_num_layers": backend.num_layers,
        "expected_hidden_size": backend.hidden_size,
    }
    path = Path(out) if out is not None else default_calibration_path(backend.model_id)
    if path.exists() or path.is_symlink():  # a corrupt or foreign file fails now, not after the sampling
        Calibration.load(path, **sizes)
    run = run_eval(backend, cfg, run_dir, show_progress=show_progress)
    choice = choose_selection(run.samples, backend.num_layers)
    choice["split"] = {
        "dataset": dataset,
        "offset": offset,
        "limit": limit,
        "n": n,
        "item_ids": [r.item_id for r in run.samples],
    }
    try:
        cal = Calibration.load(path, **sizes)
    except CalibrationError:
        if path.exists():
            raise
        cal = _fit_from_samples(backend, run.samples)
        logger.info("no calibration file at %s: fitted one from the calibration samples", path)
    cal = _with_probe(cal.with_selection(choice), run.samples, choice, backend.model_id, cfg.logprobs)
    cal.save(path)
    return path, choice


def _fit_from_samples(backend: Any, samples: Sequence[StoredItem]) -> Calibration:
    """A calibration fitted from the samples' decode-token norms (every layer, massive activations excluded)."""
    import torch

    from l2reason.signal.calibration import fit_calibration

    per_layer: dict[int, list[np.ndarray]] = {}
    for r in samples:
        for c in r.result.candidates:
            if c.norms is None or c.norms.per_token is None:
                continue
            arr = c.norms.array()
            keep = ~np.asarray(c.norms.masked or [False] * arr.shape[0], dtype=bool)
            for j, layer in enumerate(c.norms.layers):
                per_layer.setdefault(layer, []).append(arr[keep, j])
    return fit_calibration(
        {k: torch.from_numpy(np.concatenate(v)) for k, v in per_layer.items()},
        model_id=backend.model_id,
        num_layers=backend.num_layers,
        hidden_size=backend.hidden_size,
        n_prompts=len(samples),
    )


def _with_probe(
    cal: Calibration, samples: Sequence[StoredItem], choice: dict[str, Any], model_id: str, logprobs: Any
) -> Calibration:
    """``cal`` with the ``l2-probe`` fitted on the samples (every feature), or ``cal`` (logged) if none can be."""
    from l2reason.eval.probe import fit_on_items

    try:
        probe = fit_on_items(
            samples, "both", info={"split": choice["split"], "model_id": model_id, "logprobs": logprobs}
        )
        return cal.with_probe(probe.to_dict())
    except ConfigError as e:
        logger.warning("no probe fitted on the calibration split: %s", e)
        return cal
