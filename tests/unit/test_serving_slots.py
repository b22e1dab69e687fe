"""The engine-plugin core: per-slot state under continuous batching equals per-request runs."""

from __future__ import annotations

import pytest
import torch

from l2reason.errors import ConfigError
from l2reason.serving import EngineSettings, SlotRuntime

D, LAYERS = 6, 3


class Info:
    num_layers, hidden_size, dtype = LAYERS, D, torch.float32

    def calibrated_tau(self, layers, what, alternative):
        raise ConfigError(f"{what} needs a calibration file: {alternative}")


ERSS = {"kind": "erss", "layers": [1, 2], "S": 2, "p": 1.0, "C": 1, "c_min": -1.0, "M": 3, "threshold": {"warmup": 2}}
ALRR = {"kind": "alrr", "layers": [0, 2], "K": 2, "g": 0.0, "b": 100.0, "threshold": {"warmup": 1, "k": 0.0}}
SUPP = {"kind": "suppress", "target": "random", "rate": 0.5, "layers": [1]}


def stream(seed: int, steps: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # norms that rise and fall, so thresholds, banks and streaks all move
    scale = 1 + 3 * torch.rand(steps, 1, 1, generator=g)
    return torch.randn(steps, LAYERS, D, generator=g) * scale


def rerun(x: torch.Tensor) -> torch.Tensor:
    return 1.1 * x + 0.01  # grows the norm: recursion passes get accepted


def run(rt: SlotRuntime, schedule: list[list[tuple[int, str, EngineSettings | None, torch.Tensor]]]):
    """schedule[t] = rows of pass t: (slot, rid, settings, x[LAYERS, D]); returns {rid: [(x_out per layer, record)]}."""
    out: dict[str, list] = {}
    for rows in schedule:
        plan = rt.plan([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], decode=True)
        xs = torch.stack([r[3] for r in rows])  # [B, LAYERS, D]
        res = []
        for layer in range(LAYERS):
            res.append(rt.step_layer(plan, layer, xs[:, layer], mlp_out=xs[:, layer] * 0.5, rerun=rerun))
        for i, rec in enumerate(rt.records(plan)):
            out.setdefault(rows[i][1], []).append(([r[i] for r in res], rec))
    return out


def test_interleaved_slots_equal_separate_runs():
    a = EngineSettings(layers=[0, 2], interventions=[ERSS], seed=11)
    b = EngineSettings(layers=[2], interventions=[ALRR, SUPP], seed=5)
    c = EngineSettings(layers=[1])  # norms only
    xa, xb, xc = stream(1, 12), stream(2, 9), stream(3, 7)
    # a continuous batch: b joins late, c leaves early, rows change order
    sched = []
    for t in range(12):
        rows = [(3, "a", a, xa[t])]
        if 3 <= t < 12:
            rows.append((5, "b", b, xb[t - 3]))
        if t < 7:
            rows.insert(0, (1, "c", c, xc[t]))
        if t % 2:
            rows.reverse()
        sched.append(rows)
    together = run(SlotRuntime(Info(), num_slots=8), sched)
    for rid, s, xs in (("a", a, xa), ("b", b, xb), ("c", c, xc)):
        alone = run(SlotRuntime(Info(), num_slots=2), [[(1, rid, s, x)] for x in xs])
        assert len(alone[rid]) == len(together[rid])
        for (xo1, r1), (xo2, r2) in zip(alone[rid], together[rid], strict=True):
            for u, v in zip(xo1, xo2, strict=True):
                assert torch.equal(u, v)
            assert r1 == r2
    # the interventions did something, so the comparison was not vacuous
    rep_a = together["a"][-1][1]["r"]["erss"]
    rep_b = together["b"][-1][1]["r"]
    assert rep_a["fires"] > 0 and rep_a["injections"]
    assert sum(rep_b["alrr"]["passes_accepted"]) > 0 and sum(rep_b["suppress"]["suppressed_tokens"]) > 0
    assert "r" not in together["c"][0][1] and len(together["c"][0][1]["n"]) == 1


def test_slot_reused_by_a_new_request_starts_clean():
    a = EngineSettings(layers=[1], interventions=[ERSS], seed=3)
    xs = stream(7, 10)
    rt = SlotRuntime(Info(), num_slots=4)
    run(rt, [[(2, "first", a, x)] for x in xs])
    again = run(rt, [[(2, "second", a, x)] for x in xs])["second"]
    fresh = run(SlotRuntime(Info(), num_slots=4), [[(2, "second", a, x)] for x in xs])["second"]
    assert [r for _, r in again] == [r for _, r in fresh]
    assert again[-1][1]["r"]["erss"]["fires"] > 0


def test_intervention_off_returns_the_stream_unchanged_and_records_norms():
    rt = SlotRuntime(Info(), num_slots=2)
    x = stream(0, 1)[0]
    plan = rt.plan([1], ["r"], [EngineSettings(layers=[0, 2])], decode=True)
    outs = [rt.step_layer(plan, layer, x[layer][None], mlp_out=None, rerun=rerun) for layer in range(LAYERS)]
    assert all(torch.equal(o[0], x[i]) for i, o in enumerate(outs))
    [rec] = rt.records(plan)
    assert rec == {"n": pytest.approx([float(x[0].norm()), float(x[2].norm())], rel=1e-6)}


def test_rows_without_settings_get_nothing_and_prefill_changes_nothing():
    rt = SlotRuntime(Info(), num_slots=3)
    s = EngineSettings(layers=[1], interventions=[{"kind": "alrr", "mode": "static", "layers": [1]}])
    x = stream(4, 1)[0][1]
    plan = rt.plan([1, 2], ["p", "q"], [s, None], decode=False)  # a prefill: controllers do not run
    y = torch.stack([x, x])
    assert rt.step_layer(plan, 1, y, mlp_out=None, rerun=rerun) is y
    recs = rt.records(plan)
    assert recs[1] is None and recs[0]["n"] == pytest.approx([float(x.norm())])
    plan = rt.plan([1, 2], ["p", "q"], [s, None], decode=True)  # static recursion: always re-runs row 0
    out = rt.step_layer(plan, 1, y, mlp_out=None, rerun=rerun)
    assert torch.allclose(out[0], rerun(x)) and torch.equal(out[1], x)


def test_bad_settings_are_reported_per_row_not_raised():
    rt = SlotRuntime(Info(), num_slots=3)
    cal = EngineSettings(interventions=[{"kind": "erss", "threshold": {"mode": "calibrated"}}])
    plan = rt.plan(
        [0, 1, 2],
        ["a", "b", "c"],
        [EngineSettings(layers=[7]), ConfigError("invalid l2reason settings: boom"), cal],
        decode=True,
    )
    recs = rt.records(plan)
    assert "do not exist" in recs[0]["e"] and "boom" in recs[1]["e"] and "calibration" in recs[2]["e"]
    with pytest.raises(ConfigError, match="outside"):
        rt.plan([9], ["z"], [None], decode=True)


def test_settings_wire_format_errors():
    with pytest.raises(ConfigError, match="invalid l2reason settings"):
        EngineSettings.decode({"l2reason": "{not json"})
    with pytest.raises(ConfigError, match="unknown kind"):
        EngineSettings.decode({"l2reason": '{"interventions": [{"kind": "nope"}]}'})
    with pytest.raises(ConfigError, match="repeat"):
        EngineSettings.decode({"l2reason": '{"layers": [1, 1]}'})
    assert EngineSettings.decode({"other": 1}) is None
