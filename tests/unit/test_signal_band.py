"""default_band and resolve_layers."""

from __future__ import annotations

import pytest

from l2reason.errors import LayerError
from l2reason.signal import default_band, resolve_layers


@pytest.mark.parametrize(
    ("L", "band"),
    [
        (24, [18, 19, 20, 21, 22]),
        (28, [21, 22, 23, 24, 25, 26]),
        (32, [24, 25, 26, 27, 28, 29, 30]),
        (8, [6]),
        (7, [5]),
        (4, [2]),
        (3, [1]),
        (2, [1]),
        (1, [0]),
    ],
)
def test_default_band(L: int, band: list[int]) -> None:
    assert default_band(L) == band


def test_default_band_rejects_bad_L() -> None:
    for bad in (0, -3):
        with pytest.raises(LayerError, match="num_layers"):
            default_band(bad)


def test_resolve_layers_specs() -> None:
    assert resolve_layers(None, 24) == [18, 19, 20, 21, 22]
    assert resolve_layers("band", 24) == [18, 19, 20, 21, 22]
    assert resolve_layers("all", 3) == [0, 1, 2]
    assert resolve_layers([5, -1, 5, 0, -24], 24) == [0, 5, 23]
    assert resolve_layers((2,), 4) == [2]


@pytest.mark.parametrize("spec", [[24], [-25], [3, 30, -40]])
def test_resolve_layers_out_of_range_names_range(spec: list[int]) -> None:
    with pytest.raises(LayerError) as e:
        resolve_layers(spec, 24)
    msg = str(e.value)
    assert "0..23" in msg
    for s in spec:
        if not -24 <= s < 24:
            assert str(s) in msg


@pytest.mark.parametrize("spec", [[], [1.5], ["3"], [True], "middle", 3])
def test_resolve_layers_bad_specs(spec: object) -> None:
    with pytest.raises(LayerError, match=r"0\.\.11"):
        resolve_layers(spec, 12)  # type: ignore[arg-type]
