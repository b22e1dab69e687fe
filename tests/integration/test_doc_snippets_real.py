"""The README's Quick start, DSPy and LangChain snippets, run as printed on the packaged default model.

Each test takes its block's text from ``README.md`` (``tests/unit/test_doc_snippets.py`` extracts it) and
``exec``s it unchanged, then checks what the snippet claims to print. The README says how long each took on
2 CPU cores shared with other jobs: Quick start 5 minutes, DSPy 2-5, LangChain 2-3.5. Only the DSPy snippet,
the one most likely to break (DSPy's adapters parse real text here), is in the ``ci`` subset. DSPy's cache is
switched off for it, so a second run generates again instead of replaying the first.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.unit.test_doc_snippets import block_in

pytestmark = pytest.mark.real


def _run(*markers: str) -> dict[str, Any]:
    """Exec README blocks (each named by a string it contains) in order, in one namespace; returns it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ns: dict[str, Any] = {"__name__": "__readme__"}
    for marker in markers:
        block = block_in("README.md", marker)
        exec(compile(block.text, block.id, "exec"), ns)
    return ns


def test_readme_quick_start(capsys):
    ns = _run('backend = HFBackend("default")', "select_result(result")
    result = ns["result"]
    assert len(result.candidates) == 8 and len(result.selection["scores"]) == 8
    assert result.candidates[0].norms.array().shape[1] == 5  # band layers 18..22
    assert "alrr" in result.candidates[0].interventions
    assert result.text and result.text in capsys.readouterr().out


@pytest.mark.ci
def test_readme_dspy():
    dspy = pytest.importorskip("dspy")
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    try:
        pred = _run("l2reason.L2SelectBest(")["pred"]
    finally:
        dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True)
    assert isinstance(pred.answer, str)
    assert pred.l2.score is not None and pred.l2.calls
    assert all(c["n"] >= 2 and len(c["candidates"]) == c["n"] for c in pred.l2.calls)


def test_readme_langchain():
    pytest.importorskip("langchain_core")
    ns = _run("ChatL2Reason(")
    msg = ns["msg"]
    assert msg.content and msg.usage_metadata["output_tokens"] > 0
    assert set(msg.response_metadata["l2reason"]["layers"]) == {18, 19, 20, 21, 22}
