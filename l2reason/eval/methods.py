"""The methods an evaluation compares: selection rules and generation configs.

Two kinds, kept apart because they cost differently:

- **Selection methods** re-score the *same* stored N samples of an item
  (sampled once, :mod:`l2reason.eval.harness`), so adding one costs no
  generation. Each name maps to a :class:`~l2reason.backends.base.SelectionSpec`
  run by :func:`l2reason.select.select_result`. ℓ2 rules use a per-item pooled
  τ (Q3 + 1.5·IQR of the item's candidates' norms per layer): no calibration
  needed, and nothing fitted on the test items but the item's own samples.
- **Generation methods** change the decode itself (greedy, ALRR, ERSS, static
  steering, suppression of high-norm vs random tokens); each is a separate
  greedy pass over the same items, one candidate per item.

Names may carry options after a colon, ``name:key=value,key=value``: for an ℓ2
selector ``l2:score=z_mean``; for a generation method, fields of its
intervention spec (``alrr:K=2,g=0.1``, ``static-steer:vectors=v.json,alpha=4``).

Example:
    >>> selection_spec("l2-vote:score=C/T").score
    'C/T'
    >>> [s["kind"] for s in generation_config("suppress-random").interventions]
    ['suppress']
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from l2reason.backends.base import SelectionSpec
from l2reason.errors import ConfigError
from l2reason.signal.calibration import check_selection_section
from l2reason.techniques.baselines import SELECTORS
from l2reason.techniques.selection import SCORE_NAMES

__all__ = [
    "AUTO",
    "PROBE",
    "PROBE_VOTE",
    "DEFAULT_GENERATION_METHODS",
    "DEFAULT_SELECTION_METHODS",
    "GENERATION_METHODS",
    "REFERENCE_ROWS",
    "SELECTION_METHODS",
    "GenerationConfig",
    "generation_config",
    "parse_method_list",
    "selection_spec",
]

AUTO = "l2-auto"
"""The ℓ2 rule chosen by ``l2reason calibrate --select`` (layer band + score),
read from the model's calibration file when the evaluation starts."""

PROBE = "l2-probe"
"""Argmax of the probe fitted by ``l2reason calibrate --select`` (read from the model's calibration file)."""
PROBE_VOTE = "l2-probe-vote"
"""The probe-weighted answer vote of the same probe."""
NEEDS_CALIBRATION = (AUTO, PROBE, PROBE_VOTE)
"""Methods read from the calibration file; never part of ``all``."""

# name -> SelectionSpec keyword arguments. The ℓ2 rules come in every score
# variant; "l2" alone is the default score (B/T) on the default band.
SELECTION_METHODS: dict[str, dict[str, Any]] = {
    "random": {"method": "random"},
    "majority": {"method": "majority"},
    "shortest": {"method": "shortest"},
    "self-certainty": {"method": "self-certainty"},
    "self-certainty-borda": {"method": "self-certainty-borda"},
    "deepconf": {"method": "deepconf"},
    "deepconf-tail": {"method": "deepconf-tail"},
    **{f"l2:{s}": {"method": "l2", "score": s} for s in SCORE_NAMES},
    **{f"l2-vote:{s}": {"method": "l2-vote", "score": s} for s in SCORE_NAMES},
}
SELECTION_METHODS[PROBE] = {"method": "l2-probe"}
SELECTION_METHODS[PROBE_VOTE] = {"method": "l2-probe-vote"}
SELECTION_METHODS["l2"] = SELECTION_METHODS["l2:B/T"]
SELECTION_METHODS["l2-vote"] = SELECTION_METHODS["l2-vote:B/T"]

REFERENCE_ROWS = ("sample@1", "oracle@N")
"""Rows every report adds: the first candidate alone (one temperature sample)
and pass@N (some candidate is right: the ceiling of any selector)."""

DEFAULT_SELECTION_METHODS: tuple[str, ...] = (
    "random",
    "majority",
    "shortest",
    "self-certainty",
    "self-certainty-borda",
    "deepconf",
    "deepconf-tail",
    *(f"l2:{s}" for s in SCORE_NAMES),
    *(f"l2-vote:{s}" for s in SCORE_NAMES),
)


class GenerationConfig(BaseModel):
    """One generation-changing method: greedy decoding plus interventions.

    Args:
        name: the method's name as given (options included).
        interventions: intervention dicts for ``GenerationRequest.interventions``
            (``kind`` = ``alrr``, ``erss``, ``static_steer`` or ``suppress``).

    Example:
        >>> generation_config("alrr:K=2").interventions
        [{'kind': 'alrr', 'K': 2}]
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    interventions: list[dict[str, Any]] = Field(default_factory=list)


# name -> the intervention list (before options). All run greedy (T = 0), n = 1.
GENERATION_METHODS: dict[str, list[dict[str, Any]]] = {
    "greedy": [],
    "alrr": [{"kind": "alrr"}],  # paper's setting: K=1, g=0.2, b=1.5, band layers, adaptive τ
    "alrr-static": [{"kind": "alrr", "mode": "static"}],  # "duplicate a block" baseline
    "erss": [{"kind": "erss"}],  # M=32, S=40, p=0.2, C=32, c_min=0.5, β=0.5
    "static-steer": [{"kind": "static_steer"}],  # needs vectors=<json file {layer: [d floats]}>
    "suppress-high": [{"kind": "suppress", "target": "high_norm"}],  # scale high-norm tokens by 0.1
    "suppress-random": [{"kind": "suppress", "target": "random"}],  # same action on 5% random tokens
    # Random tokens at the rate suppress-high measured in the same run (the harness sets `rate`).
    "suppress-matched": [{"kind": "suppress", "target": "random"}],
}

MATCHED_RATE_SOURCE = {"suppress-matched": "suppress-high"}
"""Generation methods whose random rate is matched to another pass of the run."""

DEFAULT_GENERATION_METHODS: tuple[str, ...] = (
    "greedy",
    "alrr",
    "erss",
    "suppress-high",
    "suppress-random",
    "suppress-matched",
)


def _split(name: str) -> tuple[str, dict[str, str]]:
    """``"alrr:K=2,g=0.1"`` -> ``("alrr", {"K": "2", "g": "0.1"})``; ``"l2:C/T"`` keeps its score."""
    base, _, rest = name.partition(":")
    opts: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            opts["score"] = part  # "l2:C/T" shorthand
        else:
            opts[key.strip()] = value.strip()
    return base.strip(), opts


def _value(text: str) -> Any:
    """An option value as JSON when it parses (numbers, bools, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def selection_spec(name: str, auto: dict[str, Any] | None = None, seed: int = 0) -> SelectionSpec:
    """The :class:`SelectionSpec` of a selection-method name.

    Args:
        name: a key of :data:`SELECTION_METHODS`, ``l2:score=<s>`` /
            ``l2-vote:score=<s>``, ``l2-auto``, ``l2-probe`` or ``l2-probe-vote``
            (the probe itself is passed to the selector separately).
        auto: the calibration file's ``selection`` dict (for ``l2-auto``).
        seed: the seed of the ``random`` selector and of the argmax rules' tie-break.

    Raises:
        ConfigError: an unknown name (the message lists the valid ones), or
            ``l2-auto`` without a usable selection in the calibration
            (:func:`~l2reason.signal.calibration.check_selection_section`).
    """
    if name == AUTO:
        if not auto:
            raise ConfigError(
                "method 'l2-auto' needs a chosen selection in the model's calibration file: "
                "run `l2reason calibrate --select` first, or drop 'l2-auto' from --methods"
            )
        problems = check_selection_section(auto)
        if problems:
            raise ConfigError(
                f"method 'l2-auto': the chosen selection {'; '.join(problems)}; "
                "run `l2reason calibrate --select` again, or drop 'l2-auto' from --methods"
            )
        direction = auto.get("direction", "high")
        return SelectionSpec(
            method=auto.get("method", "l2"),
            score=auto["score"],
            layers=list(auto["layers"]),
            tau="pooled",
            seed=seed,
            params={"direction": direction} if direction != "high" else {},
        )
    if name in SELECTION_METHODS:
        return SelectionSpec(**SELECTION_METHODS[name], seed=seed)
    base, opts = _split(name)
    if base in ("l2", "l2-vote") and set(opts) <= {"score", "layers"}:
        score = opts.get("score", "B/T")
        if score not in SCORE_NAMES:
            raise ConfigError(f"unknown ℓ2 score {score!r} in {name!r}; valid scores: {', '.join(SCORE_NAMES)}")
        layers: Any = "band"
        if "layers" in opts:
            layers = _layer_list(opts["layers"], name)
        return SelectionSpec(method=base, score=score, layers=layers, seed=seed)
    valid = sorted({*SELECTION_METHODS, AUTO})
    raise ConfigError(
        f"unknown selection method {name!r}; valid: {', '.join(valid)} "
        f"(selectors: {', '.join(sorted(SELECTORS))}; ℓ2 options: l2:score=<{'|'.join(SCORE_NAMES)}>,layers=18-22)"
    )


def _layer_list(text: str, name: str) -> list[int]:
    """``"18-22"`` -> 18..22; ``"18+20"`` or ``"18 20"`` -> [18, 20]."""
    try:
        if "-" in text.strip("-"):
            lo, hi = (int(x) for x in text.split("-", 1))
            return list(range(lo, hi + 1))
        return [int(x) for x in text.replace("+", " ").split()]
    except ValueError as e:
        raise ConfigError(f"bad layers {text!r} in {name!r}: use 'layers=18-22' or 'layers=18+20'") from e


def generation_config(name: str) -> GenerationConfig:
    """The :class:`GenerationConfig` of a generation-method name.

    Options after ``:`` set fields of the (first) intervention; for
    ``static-steer``, ``vectors=<file.json>`` reads ``{layer: [floats]}``.

    Raises:
        ConfigError: an unknown name (the message lists the valid ones), or
            options on ``greedy``, or ``static-steer`` without vectors.
    """
    base, opts = _split(name)
    if base not in GENERATION_METHODS:
        raise ConfigError(f"unknown generation method {base!r}; valid: {', '.join(GENERATION_METHODS)}")
    ivs = [dict(x) for x in GENERATION_METHODS[base]]
    if opts and not ivs:
        raise ConfigError(f"generation method {base!r} takes no options (got {opts})")
    for key, text in opts.items():
        if key == "vectors" and base == "static-steer":
            path = Path(text)
            if not path.is_file():
                raise ConfigError(f"static-steer vectors file {path} does not exist (JSON {{layer: [floats]}})")
            from l2reason.files import read_text_file

            try:
                raw = json.loads(read_text_file(path, "static-steer vectors file"))
                if not isinstance(raw, dict):
                    raise TypeError(f"a JSON {type(raw).__name__}, not an object")
                ivs[0]["vectors"] = {int(k): v for k, v in raw.items()}
            except (ValueError, TypeError, RecursionError) as e:
                if isinstance(e, ConfigError):
                    raise
                raise ConfigError(
                    f"static-steer vectors file {path} is not a JSON object {{layer: [floats]}} ({e})"
                ) from e
        else:
            ivs[0][key] = _value(text)
    if base == "static-steer" and "vectors" not in ivs[0]:
        raise ConfigError(
            "static-steer needs steering vectors: use 'static-steer:vectors=<file.json>' "
            "(a JSON object {layer: [hidden_size floats]}), optionally with alpha=<float>"
        )
    from l2reason.techniques.specs import parse_interventions

    parse_interventions(ivs)  # validate now, with the spec's own error messages
    return GenerationConfig(name=name, interventions=ivs)


def format_method_list(names: Sequence[str]) -> str:
    """A method list as :func:`parse_method_list` reads it back: ``,`` between names, or ``;`` when an option
    holds a comma; ``"none"`` for no methods.

    Example:
        >>> format_method_list(["greedy", "static-steer:vectors=v.json,alpha=2"])
        'greedy;static-steer:vectors=v.json,alpha=2'
    """
    return (";" if any("," in n for n in names) else ",").join(names) or "none"


def parse_method_list(text: str | list[str] | tuple[str, ...], kind: str) -> list[str]:
    """Split a comma/space separated method list and check every name.

    ``"all"`` or ``"default"`` stands for the default list (``"all,l2-auto,l2-probe"``
    adds to it); ``"none"`` or ``""`` means no methods. Names with options use ``;`` between methods when
    the options hold commas (``"alrr:K=2,g=0.1;erss"``).

    Args:
        text: the list as typed, or already a list.
        kind: ``"selection"`` or ``"generation"``.

    Raises:
        ConfigError: an unknown name (listing the valid ones).

    Example:
        >>> parse_method_list("majority, l2", "selection")
        ['majority', 'l2']
    """
    if isinstance(text, str):
        sep = ";" if ";" in text else ","
        names = [x.strip() for x in text.split(sep) if x.strip()]
        if sep == "," and kind == "generation":
            names = _rejoin_options(names)
    else:
        names = list(text)
    if names in (["none"], []):
        return []
    default = DEFAULT_SELECTION_METHODS if kind == "selection" else DEFAULT_GENERATION_METHODS
    names = [m for n in names for m in (default if n in ("all", "default") else [n])]
    for n in names:
        if kind == "selection":
            if n != AUTO:
                selection_spec(n)
        elif kind == "generation":
            base, _ = _split(n)
            if base not in GENERATION_METHODS:
                raise ConfigError(f"unknown generation method {base!r}; valid: {', '.join(GENERATION_METHODS)}")
        else:
            raise ConfigError(f"kind must be 'selection' or 'generation' (got {kind!r})")
    return list(dict.fromkeys(names))


def _rejoin_options(parts: list[str]) -> list[str]:
    """``["alrr:K=2", "g=0.1", "erss"]`` -> ``["alrr:K=2,g=0.1", "erss"]``."""
    out: list[str] = []
    for p in parts:
        if out and "=" in p and ":" not in p:
            out[-1] += "," + p
        else:
            out.append(p)
    return out
