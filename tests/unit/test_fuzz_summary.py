"""The fuzz figures of this session, computed from what the fuzz modules ran (the last fuzz module to run).

Per area: inputs, clear library errors, accepted-and-correct, crashes, silent acceptances, good inputs
refused and wrong results (``_fuzz.py`` defines each). The test fails if any area recorded a failure; when
every fuzz module ran, it also checks the total (at least 2,000 inputs in the areas users touch). The figures
are written to ``out/fuzz_figures.json`` when ``out/`` exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _fuzz import FAILURES, TALLY, failures, save_figures, summary_table

#: the areas the fuzz modules of issue 28 cover (engine clients, SAE/vector/collect CLI, calibration selection
#: sections, LangChain tools, request specs, eval resume); each module's own areas add to them
NEW_AREAS = (
    "engine clients",
    "sae/vector/collect cli",
    "calibration selection",
    "langchain bind_tools",
    "langchain tool-call arguments",
    "langchain parsed answers",
    "request specs",
    "eval resume",
)


def test_fuzz_summary() -> None:
    """Print every area's figures; fail on any crash, silent acceptance, refused good input or wrong result."""
    if not TALLY:
        pytest.skip("no fuzz module ran in this session: run tests/unit/test_fuzz_*.py for the figures")
    print("\nfuzz figures (this run):\n" + summary_table())
    out = Path(__file__).resolve().parents[2] / "out"
    if out.is_dir():
        save_figures(out / "fuzz_figures.json")
    bad = {area: failures(area) for area in TALLY if failures(area)}
    assert not bad, f"fuzz failures ({', '.join(FAILURES)}) per area: {bad}\n{summary_table()}"
    if all(area in TALLY for area in NEW_AREAS):
        new = sum(sum(TALLY[a].values()) for a in NEW_AREAS)
        assert new >= 2000, f"only {new} inputs in the areas of issue 28 (expected >= 2,000)"
