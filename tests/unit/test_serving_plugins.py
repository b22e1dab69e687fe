"""The plugins' glue that runs without an engine: SGLang's settings table, vLLM's per-step record check."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from l2reason.errors import ConfigError
from l2reason.serving.settings import SETTINGS_KEY, EngineSettings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "integrations" / "sglang"))
sys.path.insert(0, str(ROOT / "integrations" / "vllm"))


def test_sglang_settings_table_is_bounded_by_count_and_size(monkeypatch):
    from l2reason_sglang import runtime as rt

    monkeypatch.setattr(rt, "_SETTINGS", type(rt._SETTINGS)())
    monkeypatch.setattr(rt, "_SETTINGS_CHARS", 0)
    monkeypatch.setattr(rt, "_SETTINGS_CAP", 3)
    small = EngineSettings(layers=[1]).encode()
    for i in range(5):
        rt._record(f"r{i}", small)
    assert list(rt._SETTINGS) == ["r2", "r3", "r4"] and rt.settings_for("r0") is None
    assert rt.settings_for("r4") == EngineSettings(layers=[1])
    big = EngineSettings(layers=[2], interventions=[{"kind": "static_steer", "vectors": {1: [0.5] * 4000}}]).encode()
    monkeypatch.setattr(rt, "_SETTINGS_MAX_CHARS", len(big[SETTINGS_KEY]) + 10)
    rt._record("big", big)
    assert list(rt._SETTINGS) == ["big"] and rt._SETTINGS_CHARS == len(big[SETTINGS_KEY])
    rt._record("r4", small)  # a running request pushed out is decoded again at its next step
    assert list(rt._SETTINGS) == ["r4"] and rt._SETTINGS_CHARS == len(small[SETTINGS_KEY])
    rt._record("bad", {SETTINGS_KEY: "{nope"})
    assert isinstance(rt.settings_for("bad"), ConfigError)
    rt._record("r4", None)  # the request dropped its settings
    assert rt.settings_for("r4") is None


def test_vllm_every_emitted_token_of_a_request_with_settings_gets_a_record():
    pytest.importorskip("torch")
    from l2reason_vllm.runtime import CHUNK, DECODE, PREFILL, RowInfo, WorkerState

    st = WorkerState()
    s = EngineSettings(layers=[0]).encode()[SETTINGS_KEY]
    rows = {
        "dec": RowInfo(DECODE, [1], s),
        "pre": RowInfo(PREFILL, [2], s),
        "chunk": RowInfo(CHUNK, [3], s),
        "plain": RowInfo(DECODE, [4]),
        "bad": RowInfo(DECODE, [5], '{"interventions": [{"kind": "nope"}]}'),
    }
    st.bind(rows, set())
    assert isinstance(st.settings["bad"], ConfigError)
    recs = st.take_records()  # the step could place none of them: errors, never a gap
    assert sorted(recs) == ["bad", "dec", "pre"] and "unknown kind" in recs["bad"]["e"]
    assert "could not place" in recs["dec"]["e"] and "could not place" in recs["pre"]["e"]
    st.bind({}, {"dec", "pre", "chunk", "bad"})
    assert st.take_records() == {} and "dec" not in st.settings
