"""Calibrations that ship with l2reason: found by the weights' hash, user files first, never for other weights."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from l2reason.backends.hf import HFBackend
from l2reason.errors import CalibrationError
from l2reason.models.registry import PACKAGED
from l2reason.signal import calibration as calmod
from l2reason.signal.calibration import Calibration, default_calibration_path, fit_calibration, shipped_calibration

HASH_A = "a" * 64
HASH_B = "b" * 64


def _cal(tiny, tau_scale: float, weights_sha256: str | None) -> Calibration:
    g = torch.Generator().manual_seed(0)
    L = tiny.num_layers
    norms = {layer: tau_scale * (torch.rand(50, generator=g) + 1.0) for layer in range(L)}
    return fit_calibration(
        norms,
        model_id=tiny.model_id,
        num_layers=L,
        hidden_size=tiny.hidden_size,
        n_prompts=2,
        weights_sha256=weights_sha256,
    )


@pytest.fixture
def places(tmp_path, monkeypatch):
    """An empty user cache and an empty shipped folder, both under tmp_path."""
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setenv("L2REASON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(calmod, "shipped_calibration_dir", lambda: shipped)
    return shipped


def test_shipped_file_is_used_only_for_its_weights(tiny, places):
    _cal(tiny, 1.0, HASH_A).save(places / "tiny.json")
    same = HFBackend(dataclasses.replace(tiny, weights_sha256=HASH_A))
    assert same.calibration is not None and same.calibration.weights_sha256 == HASH_A
    other = HFBackend(dataclasses.replace(tiny, weights_sha256=HASH_B))
    assert other.calibration is None  # same model id, other weights: not used
    unknown = HFBackend(dataclasses.replace(tiny, weights_sha256=None))
    assert unknown.calibration is None  # no hash known: no shipped file


def test_user_file_takes_precedence_over_shipped(tiny, places):
    _cal(tiny, 1.0, HASH_A).save(places / "tiny.json")
    user = _cal(tiny, 3.0, HASH_A)
    user.save(default_calibration_path(tiny.model_id))
    be = HFBackend(dataclasses.replace(tiny, weights_sha256=HASH_A))
    assert be.calibration.tau == user.tau
    assert be.calibration.tau != shipped_calibration(tiny.model_id, HASH_A).tau


def test_user_file_for_other_weights_is_refused(tiny, places):
    _cal(tiny, 1.0, HASH_B).save(default_calibration_path(tiny.model_id))
    be = HFBackend(dataclasses.replace(tiny, weights_sha256=HASH_A))
    with pytest.raises(CalibrationError, match="measured on weights with sha256 bbbbbbbbbbbb"):
        _ = be.calibration


def test_weights_hash_is_validated(tiny, tmp_path):
    with pytest.raises(CalibrationError, match="64 lowercase hex"):
        _cal(tiny, 1.0, "ABC")
    path = _cal(tiny, 1.0, HASH_A).save(tmp_path / "c.json")
    obj = json.loads(path.read_text())
    obj["weights_sha256"] = 12
    path.write_text(json.dumps(obj))
    with pytest.raises(CalibrationError, match="weights_sha256 must be 64 lowercase hex digits or null, got '12'"):
        Calibration.load(path)


def test_shipped_files_name_packaged_models():
    """Every shipped file is valid and belongs to a packaged model: its id, its weights' hash."""
    folder = calmod.shipped_calibration_dir()
    files = sorted(folder.glob("*.json"))
    assert {f.stem for f in files} == set(PACKAGED)  # one per packaged model, named after it
    for f in files:
        cal = Calibration.load(f)
        pm = PACKAGED[f.stem]
        assert (cal.model_id, cal.weights_sha256) == (pm.model_id, pm.sha256)
        assert cal.layers == list(range(cal.num_layers))  # every layer calibrated
        assert cal.quantile == 0.95 and cal.n_prompts >= 16
        assert shipped_calibration(pm.model_id, pm.sha256) == cal
