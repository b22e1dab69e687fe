"""Calibrated per-layer thresholds: fit, save, load.

The *calibrated* threshold mode (``docs/techniques.md``, "Thresholds τ"): ``τ_l``
is the q-quantile (default q = 0.95) of layer ``l``'s decode-token norms over
a calibration set. The result is a small versioned JSON file keyed by model
id, by default under ``cache_dir()/calibration/<safe model id>.json``.

The packaged models' calibrations ship inside the package
(``l2reason/calibrations/``), keyed by the sha256 of the weights they were
measured on; a backend uses a shipped file only when no user file exists for
its model (``l2reason calibrate`` writes user files, which take precedence) and
only when the loaded weights have that exact hash
(:func:`shipped_calibration`).

Every problem with a file (missing, corrupt JSON, NaN/inf, unknown field,
other schema version, other model) is a :class:`~l2reason.errors.CalibrationError`
that names the file and says to re-run ``l2reason calibrate``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal, Self

import pydantic
import torch
from pydantic import ConfigDict, field_validator, model_validator
from torch import Tensor

from l2reason._paths import cache_dir, safe_name
from l2reason.errors import CalibrationError, validation_summary
from l2reason.files import parse_json

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_JSON_DEPTH",
    "MIN_CALIBRATION_TOKENS",
    "SCHEMA_VERSION",
    "SELECTION_SCORES",
    "Calibration",
    "check_selection_section",
    "default_calibration_path",
    "fit_calibration",
    "shipped_calibration",
    "shipped_calibration_dir",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MIN_CALIBRATION_TOKENS = 10  # fewer tokens than this cannot give a meaningful 0.95-quantile
_RERUN = "re-run `l2reason calibrate`"
_MAX_COUNT = 10**13  # prompts or tokens a calibration can have been fitted on: beyond it a count is corrupt
_PER_LAYER = ("tau", "q1", "median", "q3", "n_tokens")
MAX_FILE_BYTES = 64 * 2**20  # calibration files are a few kB; anything this large is not one
MAX_JSON_DEPTH = 32  # the schema nests 3 levels (selection tables a few more)
_F32_MAX = float(torch.finfo(torch.float32).max)
_F32_TINY = float(torch.finfo(torch.float32).smallest_normal)  # a tau below this is (almost) 0 in float32


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("l2reason")
    except Exception:  # not installed (source checkout)
        return "0"


def _errors_text(err: pydantic.ValidationError, *, drop_fix: bool = False) -> str:
    # drop_fix: the caller says what to do once
    return validation_summary(err, root="<root>", strip=(f"; {_RERUN}.", f": {_RERUN}.") if drop_fix else ())


def _is_sha256(x: Any) -> bool:
    return isinstance(x, str) and len(x) == 64 and all(c in "0123456789abcdef" for c in x)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _type_problem(obj: dict[str, Any]) -> str | None:
    """What is wrong with the JSON types of the fields this module reads (None: nothing).

    Strict where pydantic's lax mode would coerce (``"1.0"`` or ``true`` as a
    number). Sections this check does not know are left to the model's own
    validation, so optional sections added later keep loading.
    """
    for name in ("model_id", "created_at", "l2reason_version"):
        if name in obj and not isinstance(obj[name], str):
            return f"{name} must be a string, got {type(obj[name]).__name__}"
    if obj.get("weights_sha256") is not None:
        h = obj["weights_sha256"]
        if not _is_sha256(h):
            return f"weights_sha256 must be 64 lowercase hex digits or null, got {str(h)[:80]!r}"
    if "created_at" in obj:
        try:
            datetime.fromisoformat(obj["created_at"])
        except ValueError:
            return f"created_at must be an ISO-8601 timestamp, got {obj['created_at'][:40]!r}"
    for name in ("num_layers", "hidden_size", "n_prompts"):
        if name in obj and not (isinstance(obj[name], int) and not isinstance(obj[name], bool)):
            return f"{name} must be an integer, got {obj[name]!r}"
    if "quantile" in obj and not _is_number(obj["quantile"]):
        return f"quantile must be a number, got {obj['quantile']!r}"
    for name, ok, what in (
        ("layers", lambda x: isinstance(x, int) and not isinstance(x, bool), "integers"),
        ("n_tokens", lambda x: isinstance(x, int) and not isinstance(x, bool), "integers"),
        ("tau", _is_number, "numbers"),
        ("q1", _is_number, "numbers"),
        ("median", _is_number, "numbers"),
        ("q3", _is_number, "numbers"),
    ):
        if name not in obj:
            continue
        v = obj[name]
        if not isinstance(v, list):
            return f"{name} must be a list of {what}, got {type(v).__name__}"
        bad = [i for i, x in enumerate(v) if not ok(x)]
        if bad:
            return f"{name} must be a list of {what}; positions {bad[:5]} hold {[v[i] for i in bad[:5]]!r}"
    return None


def _finite_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


SELECTION_SCORES = ("A/T", "B/T", "C/T", "D/T", "z_mean")
"""The ℓ2 scores a ``selection`` section may name (``l2reason.techniques.selection.SCORE_NAMES``; this layer
cannot import it, a test keeps the two equal)."""
SELECTION_METHODS = ("l2", "l2-vote")
SELECTION_DIRECTIONS = ("high", "low")


def check_selection_section(sel: Any, num_layers: int | None = None) -> list[str]:
    """What is wrong with a ``selection`` section (``l2reason calibrate --select``'s choice), as messages.

    The fields ``l2-auto`` reads must be there and usable: ``layers`` (distinct integers >= 0, below
    ``num_layers`` when the model's depth is given), ``score`` (one of :data:`SELECTION_SCORES`);
    optional ``method`` (:data:`SELECTION_METHODS`), ``direction`` (:data:`SELECTION_DIRECTIONS`),
    ``tau`` (only ``"pooled"``) and ``split`` (an object whose ``item_ids`` is a list of strings).
    Other keys (the search's table, its figures) are kept as they are.

    Args:
        sel: the section.
        num_layers: the model's decoder layers (None: the range is not checked).

    Returns:
        The problems (empty: the section is usable).

    Example:
        >>> check_selection_section({"layers": [18, 99], "score": "B/T"}, num_layers=24)
        ['layers [99] are outside 0..23']
    """
    if not isinstance(sel, dict):
        return [f"must be a JSON object, got {type(sel).__name__}"]
    out = [f"has no {k!r}" for k in ("layers", "score") if k not in sel]
    layers = sel.get("layers")
    if "layers" in sel:
        if not isinstance(layers, list) or not layers or not all(type(x) is int for x in layers):
            out.append(f"layers must be a non-empty list of layer indices, got {str(layers)[:80]}")
        elif len(set(layers)) != len(layers):
            out.append(f"layers has duplicates: {layers}")
        elif any(x < 0 for x in layers):
            out.append(f"layers must be indices >= 0 (as `l2reason calibrate --select` writes them), got {layers}")
        elif num_layers is not None and any(not 0 <= x < num_layers for x in layers):
            out.append(f"layers {[x for x in layers if not 0 <= x < num_layers]} are outside 0..{num_layers - 1}")
    choices = (
        ("score", SELECTION_SCORES),
        ("method", SELECTION_METHODS),
        ("direction", SELECTION_DIRECTIONS),
        ("tau", ("pooled",)),
    )
    for key, valid in choices:
        if key in sel and sel[key] not in valid:
            out.append(f"{key} must be one of {', '.join(valid)}, got {str(sel[key])[:80]!r}")
    split = sel.get("split")
    if "split" in sel and not (
        isinstance(split, dict)
        and isinstance(split.get("item_ids", []), list)
        and all(isinstance(x, str) for x in split.get("item_ids", []))
    ):
        out.append(f"split must be an object whose item_ids is a list of strings, got {str(split)[:80]}")
    return out


def _read_calibration_bytes(path: Path) -> bytes:
    """The bytes of the calibration file at ``path`` (:meth:`Calibration.load`'s first step).

    Raises:
        CalibrationError: missing, not a regular file, larger than :data:`MAX_FILE_BYTES`, unreadable, or a path
            the OS cannot take.
    """
    try:
        if path.exists() and not path.is_file():
            raise CalibrationError(
                f"calibration path {path} is not a regular file (a directory?); pass the JSON file itself."
            )
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CalibrationError(
                f"calibration file {path} is {size} bytes, more than any calibration file "
                f"({MAX_FILE_BYTES} at most); pass the right file or {_RERUN}."
            )
        return path.read_bytes()
    except CalibrationError:
        raise
    except FileNotFoundError as e:
        raise CalibrationError(
            f"no calibration file at {path}; run `l2reason calibrate` for this model "
            "first, or pass the path of an existing file."
        ) from e
    except OSError as e:
        raise CalibrationError(f"cannot read calibration file {path}: {e.strerror or e}") from e
    except ValueError as e:  # a path the OS cannot take (an embedded NUL byte)
        raise CalibrationError(f"{str(path)!r} is not a usable calibration file path ({e})") from e


def _read_json_object(path: Path, data: bytes, fix: str) -> dict[str, Any]:
    """The JSON object in a calibration file's bytes ``data`` (:meth:`Calibration.load`'s second step).

    Raises:
        CalibrationError: not UTF-8, not JSON, NaN/inf, nested too deeply, or not an object.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CalibrationError(
            f"calibration file {path} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
            f"it is not a calibration file: {fix}."
        ) from e

    return parse_json(
        text,
        f"calibration file {path}",
        f"it is not a usable calibration file: {fix}.",
        error=CalibrationError,
        max_depth=MAX_JSON_DEPTH,
    )


class Calibration(pydantic.BaseModel):
    """Per-layer norm statistics of one model on a calibration set.

    Per-layer lists are aligned with ``layers``. Construct it with
    :func:`fit_calibration` or :meth:`load`; direct construction validates
    too (raising ``pydantic.ValidationError``, a ``ValueError``).

    Args:
        schema_version: file format version (1).
        model_id: the model the norms come from.
        num_layers: ``L``, decoder layers of that model.
        hidden_size: ``d``.
        quantile: ``q`` in (0, 1); ``tau`` is the q-quantile.
        layers: calibrated layer indices (unique, in ``0..L-1``).
        tau: ``τ_l``, the q-quantile of layer-l decode-token norms (> 0).
        q1: 0.25-quantile per layer.
        median: 0.5-quantile per layer.
        q3: 0.75-quantile per layer.
        n_tokens: tokens per layer the statistics come from.
        n_prompts: calibration prompts used.
        created_at: ISO-8601 UTC timestamp.
        l2reason_version: library version that wrote the file.
        selection: the auto-calibrated selection (layer band + score name,
            :func:`check_selection_section` says what it must hold); ``None``
            until set with :meth:`with_selection`.
        probe: the ``l2-probe`` selector fitted by ``l2reason calibrate
            --select`` (feature names, standardisation, weights; see
            :mod:`l2reason.techniques.probe`); ``None`` until set with
            :meth:`with_probe`. Optional: files without it load as before.
        weights_sha256: sha256 (lowercase hex) of the weights the norms were
            measured on, when known (the packaged models' source files);
            shipped calibrations are found by it. ``None`` for older files and
            for models whose weights have no recorded hash.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> cal = fit_calibration({18: torch.rand(100, generator=g) + 1.0},
        ...                       model_id="tiny", num_layers=24, hidden_size=32, n_prompts=2)
        >>> cal.tau_for([18]).shape
        torch.Size([1])
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    model_id: str
    num_layers: int
    hidden_size: int
    quantile: float
    layers: list[int]
    tau: list[float]
    q1: list[float]
    median: list[float]
    q3: list[float]
    n_tokens: list[int]
    n_prompts: int
    created_at: str
    l2reason_version: str = "0"
    selection: dict[str, Any] | None = None
    probe: dict[str, Any] | None = None
    weights_sha256: str | None = None

    @field_validator("probe")
    @classmethod
    def _probe(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        need = ("version", "feature_set", "layers", "features", "mean", "scale", "weights", "bias")
        missing = [k for k in need if k not in v]
        if missing:
            raise CalibrationError(f"probe lacks {missing}; re-run `l2reason calibrate --select`.")
        n = len(v["features"]) if isinstance(v["features"], list) else -1
        for k in ("mean", "scale", "weights"):
            x = v[k]
            if not isinstance(x, list) or len(x) != n or not all(_finite_number(e) for e in x):
                raise CalibrationError(
                    f"probe {k} must hold one finite number per feature ({n}); re-run `l2reason calibrate --select`."
                )
        if not _finite_number(v["bias"]):
            raise CalibrationError("probe bias must be a finite number; re-run `l2reason calibrate --select`.")
        return v

    @field_validator("weights_sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is not None and not _is_sha256(v):
            raise CalibrationError(f"weights_sha256 must be 64 lowercase hex digits or None, got {v[:80]!r}")
        return v

    @field_validator("tau", "q1", "median", "q3")
    @classmethod
    def _finite(cls, v: list[float], info: pydantic.ValidationInfo) -> list[float]:
        bad = [i for i, x in enumerate(v) if not math.isfinite(x)]
        if bad:
            raise CalibrationError(
                f"{info.field_name} holds NaN/inf at positions {bad}; the calibration is unusable: {_RERUN}."
            )
        if info.field_name == "tau" and any(x <= 0 for x in v):
            raise CalibrationError(f"tau must be > 0 (norms are positive), got {v}; {_RERUN}.")
        if info.field_name != "tau" and any(x < 0 for x in v):
            raise CalibrationError(f"{info.field_name} must be >= 0 (norms are non-negative), got {v}; {_RERUN}.")
        # The thresholds are used as float32 tensors: a value that overflows to inf there
        # (1e39) or that rounds to 0 (a tau of 1e-50) would silently change every score.
        big = [i for i, x in enumerate(v) if abs(x) > _F32_MAX]
        if big:
            raise CalibrationError(
                f"{info.field_name} holds values beyond float32's range (max {_F32_MAX:.3g}) at positions "
                f"{big} ({[v[i] for i in big]}); they would become inf: {_RERUN}."
            )
        if info.field_name == "tau":
            tiny = [i for i, x in enumerate(v) if x < _F32_TINY]
            if tiny:
                raise CalibrationError(
                    f"tau holds values that round to 0 in float32 at positions {tiny} "
                    f"({[v[i] for i in tiny]}); tau must be > 0: {_RERUN}."
                )
        return v

    @field_validator("quantile")
    @classmethod
    def _quantile(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise CalibrationError(f"quantile must be in (0, 1), got {v}; {_RERUN}.")
        return v

    @field_validator("num_layers", "hidden_size")
    @classmethod
    def _positive(cls, v: int, info: pydantic.ValidationInfo) -> int:
        if v < 1:
            raise CalibrationError(f"{info.field_name} must be >= 1, got {v}; {_RERUN}.")
        return v

    @field_validator("n_prompts")
    @classmethod
    def _non_negative(cls, v: int) -> int:
        if not 0 <= v <= _MAX_COUNT:
            raise CalibrationError(f"n_prompts must be in [0, {_MAX_COUNT:.0e}], got {v}; {_RERUN}.")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        n = len(self.layers)
        if n == 0:
            raise CalibrationError(f"layers is empty; {_RERUN}.")
        for name in _PER_LAYER:
            got = len(getattr(self, name))
            if got != n:
                raise CalibrationError(
                    f"{name} has {got} entries but layers has {n}; the file is inconsistent: {_RERUN}."
                )
        if len(set(self.layers)) != n:
            raise CalibrationError(f"layers has duplicates: {self.layers}; {_RERUN}.")
        bad = [layer for layer in self.layers if not 0 <= layer < self.num_layers]
        if bad:
            raise CalibrationError(f"layers {bad} are outside 0..{self.num_layers - 1}; {_RERUN}.")
        if any(not 0 <= c <= _MAX_COUNT for c in self.n_tokens):
            raise CalibrationError(f"n_tokens must be in [0, {_MAX_COUNT:.0e}], got {self.n_tokens}; {_RERUN}.")
        few = [layer for layer, c in zip(self.layers, self.n_tokens, strict=True) if c < MIN_CALIBRATION_TOKENS]
        if few:
            raise CalibrationError(
                f"layers {few} were calibrated on fewer than {MIN_CALIBRATION_TOKENS} tokens "
                f"(n_tokens {self.n_tokens}): their quantiles mean nothing; {_RERUN}."
            )
        if not self.model_id.strip():
            raise CalibrationError(f"model_id is empty; {_RERUN}.")
        self._check_order()
        if self.selection is not None:
            problems = check_selection_section(self.selection, self.num_layers)
            if problems:
                raise CalibrationError(
                    f"the selection section {'; '.join(problems)}; re-run `l2reason calibrate --select`."
                )
        return self

    def _check_order(self) -> None:
        """Per layer ``q1 <= median <= q3``, and ``tau`` (the ``quantile``-quantile) where that quantile puts it."""
        q = self.quantile
        for i, layer in enumerate(self.layers):
            q1, med, q3, tau = self.q1[i], self.median[i], self.q3[i], self.tau[i]
            # Quantiles of the same values are ordered; allow float rounding only.
            tol = 1e-9 * max(abs(q1), abs(q3), abs(tau), 1.0)
            order = [("q1", q1), ("median", med), ("q3", q3)]
            order.insert(sum(1 for p in (0.25, 0.5, 0.75) if p <= q), ("tau", tau))
            if any(a > b + tol for (_, a), (_, b) in pairwise(order)):
                rule = " <= ".join(name for name, _ in order)
                raise CalibrationError(
                    f"layer {layer}: the quantiles are out of order (quantile {q} needs {rule}; got "
                    f"q1={q1}, median={med}, q3={q3}, tau={tau}); {_RERUN}."
                )

    def tau_for(self, layers: Sequence[int]) -> Tensor:
        """Thresholds for ``layers``, in the order given.

        Args:
            layers: layer indices, each of which must be calibrated.

        Returns:
            ``[len(layers)]`` float32 tensor of ``τ_l``.

        Raises:
            CalibrationError: a requested layer is not in this calibration.

        Example:
            >>> cal.tau_for([18]).dtype  # doctest: +SKIP
            torch.float32
        """
        index = {layer: i for i, layer in enumerate(self.layers)}
        missing = [layer for layer in layers if layer not in index]
        if missing:
            raise CalibrationError(
                f"layers {missing} are not calibrated for {self.model_id!r}; calibrated "
                f"layers are {self.layers}. Pick among them or {_RERUN} with those layers."
            )
        return torch.tensor([self.tau[index[layer]] for layer in layers], dtype=torch.float32)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the calibration as JSON (sorted keys, indent 2), atomically.

        Args:
            path: destination file; parent directories are created.

        Returns:
            The path written.

        Raises:
            CalibrationError: a value is NaN/inf (nothing is written).

        Example:
            >>> cal.save(default_calibration_path(cal.model_id))  # doctest: +SKIP
        """
        path = Path(path)
        try:
            text = json.dumps(self.model_dump(mode="python"), sort_keys=True, indent=2, allow_nan=False)
        except ValueError as e:
            raise CalibrationError(f"refusing to write {path}: the calibration holds NaN/inf ({e}); {_RERUN}.") from e
        except TypeError as e:
            raise CalibrationError(
                f"refusing to write {path}: selection holds a value JSON cannot store ({e}); "
                "use only str/int/float/bool/list/dict values."
            ) from e
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        logger.info("wrote calibration for %s (%d layers) to %s", self.model_id, len(self.layers), path)
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        expected_model_id: str | None = None,
        *,
        expected_num_layers: int | None = None,
        expected_hidden_size: int | None = None,
    ) -> Calibration:
        """Read and validate a calibration file.

        Args:
            path: the JSON file written by :meth:`save`.
            expected_model_id: if given, the file's ``model_id`` must equal it.
            expected_num_layers: if given, the file's ``num_layers`` must equal it.
            expected_hidden_size: if given, the file's ``hidden_size`` must equal it.

        Returns:
            The validated :class:`Calibration`.

        Raises:
            CalibrationError: missing file, not a regular file, larger than
                :data:`MAX_FILE_BYTES`, not UTF-8, corrupt or too deeply nested
                JSON, NaN/inf or a value float32 cannot hold, a value of the
                wrong type, unordered quantiles, unknown or missing field, other
                schema version, or other model (id or sizes).

        Example:
            >>> Calibration.load("qwen.json", expected_model_id="Qwen/Qwen3-8B")  # doctest: +SKIP
        """
        if not isinstance(path, str | os.PathLike):
            raise CalibrationError(
                f"a calibration is a Calibration or the path of its JSON file, got {type(path).__name__} "
                f"({str(path)[:80]}); pass the file written by `l2reason calibrate`, or None."
            )
        path = Path(path)
        fix = f"{_RERUN} to regenerate it"
        obj = _read_json_object(path, _read_calibration_bytes(path), fix)
        version = obj.get("schema_version")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise CalibrationError(
                f"calibration file {path} has schema_version {version!r}; this l2reason reads "
                f"version {SCHEMA_VERSION}: {fix}."
            )
        problem = _type_problem(obj)
        if problem:
            raise CalibrationError(f"calibration file {path} is invalid: {problem}; {fix}.")
        try:
            cal = cls.model_validate(obj)
        except pydantic.ValidationError as e:
            raise CalibrationError(
                f"calibration file {path} is invalid: {_errors_text(e, drop_fix=True)}; {fix}."
            ) from e
        cal.check_model(
            model_id=expected_model_id,
            num_layers=expected_num_layers,
            hidden_size=expected_hidden_size,
            source=f"calibration file {path}",
        )
        return cal

    def check_model(
        self,
        model_id: str | None = None,
        num_layers: int | None = None,
        hidden_size: int | None = None,
        *,
        weights_sha256: str | None = None,
        source: str = "the calibration",
    ) -> None:
        """Check that this calibration is for the given model (each argument that is not None).

        Args:
            model_id: the model's id.
            num_layers: the model's decoder layers.
            hidden_size: the model's hidden size.
            weights_sha256: the loaded weights' hash; checked only when both
                it and the calibration's own ``weights_sha256`` are known.
            source: how messages name the calibration (e.g. its file).

        Raises:
            CalibrationError: the id, a size or the weights' hash differs.

        Example:
            >>> cal.check_model(num_layers=24, hidden_size=32)  # doctest: +SKIP
        """
        if model_id is not None and self.model_id != model_id:
            raise CalibrationError(
                f"{source} is for model {self.model_id!r}, not "
                f"{model_id!r}; run `l2reason calibrate` for {model_id!r} "
                "or pass that model's file."
            )
        for name, want in (("num_layers", num_layers), ("hidden_size", hidden_size)):
            have = getattr(self, name)
            if want is not None and have != want:
                raise CalibrationError(
                    f"{source} has {name}={have} but the model {self.model_id!r} loaded now has "
                    f"{name}={want}: it was made for another model (or another conversion of it); "
                    f"{_RERUN} for this model."
                )
        if weights_sha256 is not None and self.weights_sha256 is not None and weights_sha256 != self.weights_sha256:
            raise CalibrationError(
                f"{source} was measured on weights with sha256 {self.weights_sha256[:12]}…, but the model "
                f"{self.model_id!r} loaded now has {weights_sha256[:12]}… (another release or quantisation): "
                f"{_RERUN} for these weights."
            )

    def with_selection(self, sel: dict[str, Any]) -> Calibration:
        """A copy with ``selection`` set (validated).

        Args:
            sel: e.g. ``{"layers": [18, 19, 20], "score": "B/T"}``.

        Returns:
            A new :class:`Calibration`; ``self`` is unchanged.

        Example:
            >>> cal.with_selection({"score": "B/T"}).selection  # doctest: +SKIP
            {'score': 'B/T'}
        """
        return self._with_section("selection", sel, f"selection {sel!r}")

    def with_probe(self, probe: dict[str, Any]) -> Calibration:
        """A copy with the ``probe`` section set (validated).

        Args:
            probe: a fitted probe as plain data (``Probe.to_dict()``).

        Returns:
            A new :class:`Calibration`; ``self`` is unchanged.

        Example:
            >>> cal.with_probe(probe.to_dict()).probe["feature_set"]  # doctest: +SKIP
            'both'
        """
        return self._with_section("probe", probe, "probe")

    def _with_section(self, key: str, value: Mapping[str, Any], what: str) -> Calibration:
        """A validated copy with one optional section replaced."""
        if not isinstance(value, Mapping):
            raise CalibrationError(f"invalid {what}: it must be a dict, got {type(value).__name__}")
        data = self.model_dump()
        data[key] = dict(value)
        try:
            return type(self).model_validate(data)
        except pydantic.ValidationError as e:
            raise CalibrationError(f"invalid {what}: {_errors_text(e)}") from e


def _quantiles(v: Tensor, qs: Sequence[float]) -> list[float]:
    """Linear-interpolation quantiles of a 1-D tensor (as ``torch.quantile``, no size cap)."""
    s = torch.sort(v).values
    n = s.numel()
    out = []
    for q in qs:
        h = q * (n - 1)
        lo = math.floor(h)
        hi = min(lo + 1, n - 1)
        out.append(float(s[lo] + (h - lo) * (s[hi] - s[lo])))
    return out


def fit_calibration(
    norms: Mapping[int, Tensor],
    *,
    model_id: str,
    num_layers: int,
    hidden_size: int,
    q: float = 0.95,
    n_prompts: int,
    created_at: str | None = None,
    weights_sha256: str | None = None,
) -> Calibration:
    """Fit per-layer quantiles of decode-token norms.

    Args:
        norms: ``{layer: [N_l]}`` 1-D decode-token norms of each layer, already
            masked (no prompt, padding or massive-activation tokens).
        model_id: the model the norms come from.
        num_layers: ``L`` of that model.
        hidden_size: ``d`` of that model.
        q: the quantile stored as ``tau`` (default 0.95).
        n_prompts: number of calibration prompts.
        created_at: ISO timestamp to record; default now (UTC).
        weights_sha256: the hash of the weights measured, when known.

    Returns:
        A validated :class:`Calibration` (layers sorted).

    Raises:
        CalibrationError: no layers, a layer with fewer than 10 tokens, a
            non-finite norm, or any invalid field.

    Example:
        >>> cal = fit_calibration({0: torch.arange(1.0, 101.0)}, model_id="m",
        ...                       num_layers=2, hidden_size=8, n_prompts=1)
        >>> round(cal.tau[0], 2), cal.median[0]
        (95.05, 50.5)
    """
    if not norms:
        raise CalibrationError("no layer norms to calibrate; collect decode-token norms first.")
    layers = sorted(norms)
    tau: list[float] = []
    q1: list[float] = []
    median: list[float] = []
    q3: list[float] = []
    n_tokens: list[int] = []
    for layer in layers:
        v = norms[layer].detach().reshape(-1).to("cpu", torch.float64)
        if v.numel() < MIN_CALIBRATION_TOKENS:
            raise CalibrationError(
                f"layer {layer} has {v.numel()} decode tokens; calibration needs at least "
                f"{MIN_CALIBRATION_TOKENS} per layer: use more prompts or longer generations."
            )
        if not bool(torch.isfinite(v).all()):
            raise CalibrationError(
                f"layer {layer} has NaN/inf norms; check the model's dtype (try bfloat16 or "
                "float32) and re-run `l2reason calibrate`."
            )
        for acc, x in zip((tau, q1, median, q3), _quantiles(v, (q, 0.25, 0.5, 0.75)), strict=True):
            acc.append(x)
        n_tokens.append(int(v.numel()))
    try:
        return Calibration(
            model_id=model_id,
            num_layers=num_layers,
            hidden_size=hidden_size,
            quantile=q,
            layers=layers,
            n_prompts=n_prompts,
            created_at=created_at or datetime.now(UTC).isoformat(timespec="seconds"),
            l2reason_version=_version(),
            tau=tau,
            q1=q1,
            median=median,
            q3=q3,
            n_tokens=n_tokens,
            weights_sha256=weights_sha256,
        )
    except pydantic.ValidationError as e:
        raise CalibrationError(f"cannot build calibration for {model_id!r}: {_errors_text(e)}") from e


def default_calibration_path(model_id: str) -> Path:
    """Where the calibration of ``model_id`` lives by default.

    Args:
        model_id: e.g. ``"Qwen/Qwen3-8B"``.

    Returns:
        ``cache_dir()/"calibration"/"<safe_name(model_id)>.json"``.

    Example:
        >>> default_calibration_path("Qwen/Qwen3-8B").name
        'Qwen--Qwen3-8B.json'
    """
    return cache_dir() / "calibration" / f"{safe_name(model_id)}.json"


def shipped_calibration_dir() -> Path:
    """The folder of the calibration files that ship with l2reason (``l2reason/calibrations``)."""
    return Path(__file__).resolve().parent.parent / "calibrations"


def shipped_calibration(model_id: str, weights_sha256: str | None) -> Calibration | None:
    """The shipped calibration measured on exactly these weights, else None.

    A shipped file is used only for the weights it was measured on: its
    ``model_id`` and ``weights_sha256`` must both match. A model with no known
    weights hash (a local folder, a hub id) gets no shipped file; run
    ``l2reason calibrate`` for it.

    Args:
        model_id: the loaded model's id.
        weights_sha256: the loaded weights' sha256, or None when unknown.

    Returns:
        The validated :class:`Calibration`, or None.

    Example:
        >>> from l2reason.models.registry import QWEN_05B
        >>> shipped_calibration(QWEN_05B.model_id, QWEN_05B.sha256).layers[:3]
        [0, 1, 2]
    """
    if weights_sha256 is None:
        return None
    folder = shipped_calibration_dir()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        cal = Calibration.load(path)  # a broken shipped file is a packaging bug: let it raise
        if cal.weights_sha256 == weights_sha256 and cal.model_id == model_id:
            return cal
    return None
