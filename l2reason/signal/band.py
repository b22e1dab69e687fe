"""Which decoder layers the signal is read from.

The default *layer band* is the last quarter of the stack minus the final
layer, ``l ∈ [L − ⌊L/4⌋, L − 2]`` (``docs/techniques.md``, "Layer band"): a
24-layer model gives layers 18..22. Layer indices here are 0-based decoder
layer indices: ``x_l`` is the residual stream after decoder layer ``l``, before
the model's final norm, i.e. Hugging Face's ``output_hidden_states[l + 1]`` for
``l < L − 1``. The last layer differs: transformers applies the final norm to
``output_hidden_states[L]``, while our layer ``L − 1`` is the residual before it
(``docs/techniques.md``, "Notation").
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Literal, SupportsIndex

from l2reason.errors import LayerError

__all__ = ["LayerSpec", "default_band", "resolve_layers"]

LayerSpec = Sequence[int] | Literal["band", "all"] | None


def _check_num_layers(num_layers: int) -> None:
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise LayerError(
            f"num_layers must be an int >= 1, got {num_layers!r}; pass the model's "
            "decoder layer count (config.num_hidden_layers)."
        )


def default_band(num_layers: int) -> list[int]:
    """The default layer band ``[L − ⌊L/4⌋, L − 2]`` (inclusive).

    The band is empty for ``L < 8``; tiny (test) models then get a single
    layer: the penultimate layer ``L − 2`` (the band's upper end) when
    ``L ≥ 3``, else the last layer (``L = 2 -> [1]``, ``L = 1 -> [0]``;
    for ``L = 2`` layer 0 is barely past the embeddings).

    Args:
        num_layers: ``L``, the number of decoder layers (>= 1).

    Returns:
        Sorted 0-based layer indices.

    Raises:
        LayerError: ``num_layers < 1``.

    Example:
        >>> default_band(24)
        [18, 19, 20, 21, 22]
        >>> default_band(2)
        [1]
    """
    _check_num_layers(num_layers)
    L = num_layers
    band = list(range(L - L // 4, L - 1))
    if band:
        return band
    return [L - 2] if L >= 3 else [L - 1]


def resolve_layers(spec: LayerSpec, num_layers: int) -> list[int]:
    """Turn a user's layer spec into sorted, unique, non-negative indices.

    Args:
        spec: ``None`` or ``"band"`` -> :func:`default_band`; ``"all"`` ->
            ``0..L-1``; a sequence of ints -> those layers, negative indices
            counting from the end (``-1`` is the last layer), sorted and
            de-duplicated.
        num_layers: ``L``, the number of decoder layers.

    Returns:
        Sorted unique layer indices in ``0..L-1``.

    Raises:
        LayerError: an unknown string, an empty list, a non-int entry, or an
            index outside ``-L..L-1`` (the message names the valid range).

    Example:
        >>> resolve_layers([-1, 3, 3], 24)
        [3, 23]
        >>> resolve_layers("band", 24)
        [18, 19, 20, 21, 22]
    """
    _check_num_layers(num_layers)
    L = num_layers
    if spec is None or spec == "band":
        return default_band(L)
    if spec == "all":
        return list(range(L))
    if isinstance(spec, str):
        raise LayerError(f"unknown layer spec {spec!r}; use 'band', 'all', or a list of layer indices in 0..{L - 1}.")
    if isinstance(spec, bool) or not isinstance(spec, Sequence):
        raise LayerError(
            f"layers must be 'band', 'all', or a list of ints in 0..{L - 1}, got "
            f"{spec!r}; wrap a single layer in a list, e.g. [{spec!r}]."
        )
    if len(spec) == 0:
        raise LayerError(f"empty layer list; give at least one layer in 0..{L - 1}.")
    idx: list[int] = []
    bad_type: list[object] = []
    for s in spec:
        # bool is an int subclass but never a layer; numpy ints and 0-d int tensors are fine.
        if isinstance(s, bool) or not isinstance(s, SupportsIndex):
            bad_type.append(s)
            continue
        try:
            idx.append(operator.index(s))
        except TypeError:  # e.g. a float tensor (has __index__ but refuses)
            bad_type.append(s)
    if bad_type:
        raise LayerError(
            f"layer indices must be ints, got {bad_type!r}; valid layers are 0..{L - 1} "
            "(negative indices count from the end)."
        )
    out_of_range = [i for i in idx if not -L <= i < L]
    if out_of_range:
        raise LayerError(
            f"layer indices {out_of_range} are out of range for a {L}-layer model; "
            f"valid layers are 0..{L - 1} (or -{L}..-1 counting from the end)."
        )
    return sorted({i % L for i in idx})
