"""Calibration: fit, save/load round trip, and every documented failure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydantic
import pytest
import torch

from l2reason.errors import CalibrationError
from l2reason.signal import Calibration, default_calibration_path, fit_calibration
from l2reason.signal.calibration import SELECTION_SCORES

MODEL = "org/tiny-model"


def _cal() -> Calibration:
    g = torch.Generator().manual_seed(0)
    norms = {
        20: 30.0 + torch.rand(500, generator=g),
        18: torch.arange(1.0, 101.0),
        19: 10.0 + torch.randn(300, generator=g).abs(),
    }
    return fit_calibration(
        norms,
        model_id=MODEL,
        num_layers=24,
        hidden_size=32,
        n_prompts=4,
        created_at="2026-01-01T00:00:00+00:00",
    )


def test_fit_values() -> None:
    cal = _cal()
    assert cal.layers == [18, 19, 20]
    assert cal.quantile == 0.95
    i = cal.layers.index(18)  # norms 1..100: linear-interpolation quantiles
    assert cal.tau[i] == pytest.approx(95.05)
    assert (cal.q1[i], cal.median[i], cal.q3[i]) == pytest.approx((25.75, 50.5, 75.25))
    assert cal.n_tokens == [100, 300, 500]
    g = torch.Generator().manual_seed(0)
    v20 = 30.0 + torch.rand(500, generator=g)
    assert cal.tau[2] == pytest.approx(torch.quantile(v20.double(), 0.95).item())
    torch.testing.assert_close(cal.tau_for([20, 18]), torch.tensor([cal.tau[2], 95.05]))
    assert cal.tau_for([18]).dtype == torch.float32


def test_fit_rejects_too_few_tokens_and_nan() -> None:
    with pytest.raises(CalibrationError, match="layer 5 has 9 decode tokens"):
        fit_calibration({5: torch.ones(9)}, model_id=MODEL, num_layers=8, hidden_size=4, n_prompts=1)
    bad = torch.ones(20)
    bad[3] = float("nan")
    with pytest.raises(CalibrationError, match="NaN"):
        fit_calibration({5: bad}, model_id=MODEL, num_layers=8, hidden_size=4, n_prompts=1)
    with pytest.raises(CalibrationError, match=r"outside 0\.\.7"):
        fit_calibration({8: torch.ones(20)}, model_id=MODEL, num_layers=8, hidden_size=4, n_prompts=1)


def test_tau_for_uncalibrated_layer_lists_calibrated() -> None:
    with pytest.raises(CalibrationError, match=r"\[3\].*\[18, 19, 20\]"):
        _cal().tau_for([18, 3])


def test_round_trip(tmp_path: Path) -> None:
    cal = _cal().with_selection({"layers": [18, 19], "score": "B/T"})
    path = cal.save(tmp_path / "sub" / "cal.json")
    assert path == tmp_path / "sub" / "cal.json"
    assert [p.name for p in path.parent.iterdir()] == ["cal.json"]  # no temp file left
    text = path.read_text()
    assert json.loads(text) == json.loads(json.dumps(json.loads(text), sort_keys=True))
    assert list(json.loads(text)) == sorted(json.loads(text))
    loaded = Calibration.load(path, expected_model_id=MODEL)
    assert loaded == cal
    assert loaded.selection == {"layers": [18, 19], "score": "B/T"}
    assert Calibration.load(str(path)) == cal


def _write(tmp_path: Path, mutate: dict[str, object] | None = None, raw: str | None = None) -> Path:
    path = tmp_path / "cal.json"
    if raw is None:
        data = _cal().model_dump()
        data.update(mutate or {})
        raw = json.dumps(data)
    path.write_text(raw)
    return path


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"no calibration file at .*l2reason calibrate"):
        Calibration.load(tmp_path / "nope.json")


def test_load_nan_in_file(tmp_path: Path) -> None:
    data = _cal().model_dump()
    data["tau"][1] = float("nan")
    path = _write(tmp_path, raw=json.dumps(data))  # python writes a NaN literal
    assert "NaN" in path.read_text()
    with pytest.raises(CalibrationError, match=r"cal\.json holds NaN.*l2reason calibrate"):
        Calibration.load(path)


def test_load_inf_via_overflow(tmp_path: Path) -> None:
    # 1e999 is a plain JSON number that parses to inf: the field validator must catch it.
    data = _cal().model_dump()
    data["q3"][0] = 12345.5
    raw = json.dumps(data).replace("12345.5", "1e999", 1)
    with pytest.raises(CalibrationError, match=r"q3: .*NaN/inf at positions \[0\].*l2reason calibrate"):
        Calibration.load(_write(tmp_path, raw=raw))


def test_load_unknown_field(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"cal\.json is invalid: bogus"):
        Calibration.load(_write(tmp_path, {"bogus": 1}))


def test_load_wrong_model(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="is for model 'org/tiny-model', not 'other/model'"):
        Calibration.load(_write(tmp_path), expected_model_id="other/model")


def test_load_corrupt_and_wrong_schema(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="not valid JSON"):
        Calibration.load(_write(tmp_path, raw='{"tau": [1.0,'))
    with pytest.raises(CalibrationError, match="not an object"):
        Calibration.load(_write(tmp_path, raw="[1, 2]"))
    with pytest.raises(CalibrationError, match="schema_version 2"):
        Calibration.load(_write(tmp_path, {"schema_version": 2}))
    with pytest.raises(CalibrationError, match="median has 2 entries but layers has 3"):
        Calibration.load(_write(tmp_path, {"median": [1.0, 2.0]}))
    with pytest.raises(CalibrationError, match="duplicates"):
        Calibration.load(_write(tmp_path, {"layers": [18, 18, 20]}))
    with pytest.raises(CalibrationError, match="tau must be > 0"):
        Calibration.load(_write(tmp_path, {"tau": [1.0, 0.0, 2.0]}))


def test_direct_construction_validates_and_is_frozen() -> None:
    data = _cal().model_dump()
    data["tau"] = [1.0, float("inf"), 2.0]
    with pytest.raises(pydantic.ValidationError, match="tau holds NaN/inf at positions \\[1\\]"):
        Calibration(**data)
    with pytest.raises(pydantic.ValidationError):
        _cal().model_id = "x"  # type: ignore[misc]


def test_save_refuses_non_finite(tmp_path: Path) -> None:
    data = _cal().model_dump()
    data["q1"] = [float("nan")] * 3
    bad = Calibration.model_construct(**data)  # bypasses validation
    with pytest.raises(CalibrationError, match="refusing to write"):
        bad.save(tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CalibrationError, match="JSON cannot store"):
        _cal().with_selection({"layers": [18], "score": "B/T", "obj": object()}).save(tmp_path / "y.json")
    assert list(tmp_path.iterdir()) == []


def test_with_selection_is_a_copy() -> None:
    cal = _cal()
    sel = cal.with_selection({"layers": [20], "score": "D/T"})
    assert cal.selection is None and sel.selection == {"layers": [20], "score": "D/T"}
    assert sel.model_copy(update={"selection": None}) == cal


def test_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("L2REASON_CACHE", str(tmp_path))
    assert default_calibration_path("Qwen/Qwen3-8B") == tmp_path / "calibration" / "Qwen--Qwen3-8B.json"


def test_selection_section_is_checked_where_it_is_set_and_loaded(tmp_path: Path) -> None:
    """Issue 28: a section l2-auto cannot use (no layers/score, layers outside the model, an unknown score or
    direction) is refused when set and when a file holding it is loaded, naming what is wrong."""
    from l2reason.techniques.selection import SCORE_NAMES

    assert SELECTION_SCORES == SCORE_NAMES  # the calibration layer keeps its own copy of the names
    for sel, message in [
        ({"score": "B/T"}, "has no 'layers'"),
        ({"layers": [18]}, "has no 'score'"),
        ({"layers": [99], "score": "B/T"}, "layers [99] are outside 0..23"),
        ({"layers": [18, 18], "score": "B/T"}, "duplicates"),
        ({"layers": [18], "score": "B/T", "direction": "sideways"}, "direction must be one of high, low"),
        ({"layers": [18], "score": "X/T"}, "score must be one of"),
        ({"layers": [18], "score": "B/T", "split": [1]}, "split must be an object"),
        (5, "must be a dict"),
    ]:
        with pytest.raises(CalibrationError, match=re.escape(message)):
            _cal().with_selection(sel)  # type: ignore[arg-type]
        data = _cal().model_dump()
        data["selection"] = sel
        path = tmp_path / "sel.json"
        path.write_text(json.dumps(data), encoding="utf-8")
        with pytest.raises(CalibrationError, match="selection"):
            Calibration.load(path)


def test_load_refuses_what_is_not_a_path() -> None:
    """``HFBackend(calibration=5)`` and friends: a CalibrationError, not a TypeError from ``Path(5)``."""
    for bad in (5, 1.5, b"cal.json", ["cal.json"], object()):
        with pytest.raises(CalibrationError, match="a calibration is a Calibration or the path of its JSON file"):
            Calibration.load(bad)  # type: ignore[arg-type]
