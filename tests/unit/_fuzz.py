"""What the fuzz modules share: the outcome of one generated input, the per-area tally and its verdict.

Every input a fuzz test generates says whether it is *bad* (the area defines which inputs are bad) and is
classified by what happened when it went in:

- ``clear``: refused with a library error (an :class:`~l2reason.errors.L2ReasonError` or pydantic's
  ``ValidationError``) whose message is not empty; through the CLI, exit code 2 with an ``error:`` line (or
  click's ``Invalid value``) and no traceback;
- ``ok``: a good input accepted, and what it produced passed the area's check;
- ``crash``: any other exception, a traceback, another exit code;
- ``silent``: a bad input accepted;
- ``refused``: a good input refused (without it, a check that refuses everything would pass);
- ``wrong``: a good input accepted, but what it produced failed the area's check.

The last four are failures. :func:`tally` counts them per area; each area's test ends with
:func:`assert_clean`, and ``test_fuzz_summary.py`` (the last fuzz module) prints every area's figures and fails
if any area recorded a failure. The figures are computed from the run, never written by hand.

Generation is deterministic: each area draws from ``random.Random(<fixed seed>)``, so a failure reproduces.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from l2reason.errors import L2ReasonError

OUTCOMES = ("clear", "ok", "crash", "silent", "refused", "wrong")
FAILURES = ("crash", "silent", "refused", "wrong")

TALLY: dict[str, collections.Counter[str]] = {}
"""area -> outcome -> count, over everything the fuzz modules ran in this session."""
EXAMPLES: dict[str, list[str]] = {}
"""area -> the first failures (input and what happened), for the failure message."""


def record(area: str, outcome: str, what: str = "") -> str:
    """Count one input of ``area``; keep ``what`` (the input and its outcome) when it is a failure."""
    assert outcome in OUTCOMES, outcome
    TALLY.setdefault(area, collections.Counter())[outcome] += 1
    if outcome in FAILURES and len(EXAMPLES.setdefault(area, [])) < 25:
        EXAMPLES[area].append(f"{outcome}: {what[:700]}")
    return outcome


def is_clear(e: BaseException) -> bool:
    """A designed refusal: one of our errors (or pydantic's) with a message."""
    return isinstance(e, L2ReasonError | ValidationError) and bool(str(e).strip())


def call(area: str, what: str, fn: Callable[[], Any], *, bad: bool, check: Callable[[Any], None] | None = None) -> str:
    """Run ``fn()`` on one input and record its outcome; ``check(value)`` (asserts) judges a good input's result."""
    try:
        value = fn()
    except Exception as e:  # the classification is the point: nothing escapes
        if not is_clear(e):
            return record(area, "crash", f"{what} -> {type(e).__name__}: {e}")
        return record(area, "clear") if bad else record(area, "refused", f"{what} -> {type(e).__name__}: {e}")
    if bad:
        return record(area, "silent", f"{what} -> accepted: {value!r:.300}")
    if check is not None:
        try:
            check(value)
        except Exception as e:
            return record(area, "wrong", f"{what} -> {type(e).__name__}: {e}")
    return record(area, "ok")


def cli_outcome(area: str, args: list[str], result: Any, *, bad: bool, check: Callable[[], None] | None = None) -> str:
    """Classify one CLI run (a ``CliRunner`` result): exit 2 with an error line, exit 0, or a crash."""
    out = result.output
    what = f"{' '.join(args)!r:.400}: exit {result.exit_code}, output {out[-400:]!r}"
    exc = result.exception
    if (exc is not None and not isinstance(exc, SystemExit)) or "Traceback" in out:
        return record(area, "crash", f"{what} ({type(exc).__name__}: {exc})")
    if result.exit_code == 2:
        if "error" not in out.lower() and "invalid value" not in out.lower():
            return record(area, "crash", f"{what} (exit 2 without an error line)")
        return record(area, "clear") if bad else record(area, "refused", what)
    if result.exit_code != 0:
        return record(area, "crash", what)
    if bad:
        return record(area, "silent", what)
    if check is not None:
        try:
            check()
        except Exception as e:
            return record(area, "wrong", f"{what} -> {type(e).__name__}: {e}")
    return record(area, "ok")


def failures(area: str) -> int:
    """How many failures ``area`` recorded."""
    c = TALLY.get(area, collections.Counter())
    return sum(c[k] for k in FAILURES)


def assert_clean(area: str, *, at_least: int) -> None:
    """The verdict of one area: at least ``at_least`` inputs ran and none failed (the first failures listed)."""
    c = TALLY.get(area, collections.Counter())
    total = sum(c.values())
    assert total >= at_least, f"{area}: only {total} inputs ran (expected >= {at_least})"
    assert c["clear"] > 0 and c["ok"] > 0, f"{area}: the inputs must include good and bad ones ({dict(c)})"
    if failures(area):
        lines = "\n  ".join(EXAMPLES.get(area, []))
        raise AssertionError(f"{area}: {figures(area)}; first failures:\n  {lines}")


def figures(area: str) -> str:
    """``inputs N: clear a, ok b, crash c, silent d, refused e, wrong f``."""
    c = TALLY.get(area, collections.Counter())
    return f"inputs {sum(c.values())}: " + ", ".join(f"{k} {c[k]}" for k in OUTCOMES)


def summary_table() -> str:
    """Every area's figures, one line each, and the total."""
    total = collections.Counter[str]()
    lines = []
    for area in sorted(TALLY):
        total.update(TALLY[area])
        lines.append(f"{area:<36} {figures(area)}")
    lines.append(f"{'total':<36} inputs {sum(total.values())}: " + ", ".join(f"{k} {total[k]}" for k in OUTCOMES))
    return "\n".join(lines)


def save_figures(path: Path) -> None:
    """Write the tally as JSON (``out/fuzz_figures.json`` when ``out/`` exists)."""
    data = {area: dict(c) for area, c in sorted(TALLY.items())}
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
