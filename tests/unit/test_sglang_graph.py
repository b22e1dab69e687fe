"""The SGLang plugin's slots (``l2reason_sglang.slots``) without an engine: SGLang's passes, captured once.

A continuous-batching run (``l2reason.serving.graph.check``: requests with
every intervention joining, decoding, leaving, slots reused, plain requests
and padding) is cut into SGLang's passes (decode rows in one pass, extend
rows in another: SGLang does not mix them), each request holding its own
request-pool slot. The plugin's forward (a stand-in decoder and
:meth:`SGLangSlots.after_layer` after every layer) is traced ONCE with
``make_fx`` at start-up, before any request, as SGLang captures its decode
graph; every pass whose requests all run on the graph path replays that
trace, every pass holding an ALRR request (or one the tables refuse) runs
eagerly, as SGLang's graph runners decline it. The result equals the
reference :class:`~l2reason.serving.slots.SlotRuntime` driven as the plugin
drove it before (one plan per pass): streams bit-equal, every record equal.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from test_graph_step import one_thread  # noqa: F401  (autouse: tiny tensors, one thread)
from torch.fx.experimental.proxy_tensor import make_fx

from l2reason.serving.capabilities import caps
from l2reason.serving.graph.check import Req, StandIn, mixed_requests, schedule
from l2reason.serving.settings import EngineSettings
from l2reason.serving.slots import SlotRuntime

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integrations" / "sglang"))
from l2reason_sglang.slots import SGLangSlots

L, D, INTER, S, N = 3, 7, 11, 8, 16  # odd, distinct sizes; N: the captured size every pass is padded to
PLAIN = S  # the plain requests' slots: S, S + 1 (SGLang gives every request a pool row)


@dataclass
class Pass:
    """One SGLang forward: its rows (rid, slot, settings, tokens), decode or extend, its padded input."""

    rows: list[tuple[str, int, EngineSettings | None, int]]
    decode: bool
    x: torch.Tensor  # [N, d], padding after the rows' tokens
    leaves: list[int]  # slots freed after the pass

    @property
    def last(self) -> list[int]:
        ends, t = [], 0
        for *_, ntok in self.rows:
            t += ntok
            ends.append(t - 1)
        return ends


def sglang_passes(reqs: list[Req]) -> list[Pass]:
    """The schedule's steps as SGLang's passes: decode rows first, then the extend rows of the same step."""
    steps = schedule(reqs, num_slots=S, tokens=N, hidden=D, seed=1)
    plain_slot: dict[str, int] = {}
    out = []
    for st in steps:
        for decode in (True, False):
            rows, xs = [], []
            for row in st.rows:
                if row.decode != decode:
                    continue
                slot = row.slot or plain_slot.setdefault(row.rid, PLAIN + len(plain_slot) % 2)
                rows.append((row.rid, slot, row.settings, row.ntok))
                xs.append(st.x[row.start : row.start + row.ntok])
            if not rows:
                continue
            x = torch.zeros(N, D)
            real = torch.cat(xs)
            x[: len(real)] = real
            out.append(Pass(rows, decode, x, []))
        out[-1].leaves = list(st.leaves)
    return out


def reference(model: StandIn, passes: list[Pass]) -> tuple[list[torch.Tensor], dict[str, list[Any]]]:
    """The reference runtime, one plan per pass over every row (the plugin's old loop)."""
    rt = SlotRuntime(model.info, num_slots=S + 2)
    streams: list[torch.Tensor] = []
    records: dict[str, list[Any]] = {}
    for p in passes:
        plan = rt.plan([r[1] for r in p.rows], [r[0] for r in p.rows], [r[2] for r in p.rows], decode=p.decode)
        last = torch.tensor(p.last)
        x = p.x.clone()
        for layer in range(L):
            o = model.mlp(layer, x)
            x = o + x
            x[last] = rt.step_layer(plan, layer, x[last], mlp_out=o[last], rerun=model.rerun(layer))
        streams.append(x[: last[-1] + 1])
        for (rid, *_), rec in zip(p.rows, rt.records(plan), strict=True):
            records.setdefault(rid, []).append(rec)
    return streams, records


def plugin_forward(model: StandIn, slots: SGLangSlots, step: Any, buffers: Any = None) -> Any:
    """The plugin's layer loop on the stand-in (SGLang's split stream: ``o`` the MLP output, ``r`` its input)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        for layer in range(L):
            o, r = model.mlp(layer, x), x.clone()
            slots.after_layer(step, layer, o, r, model.rerun(layer), buffers=buffers)
            x = o + r
        return x

    return forward


def run_plugin(model: StandIn, passes: list[Pass]) -> dict[str, Any]:
    slots = SGLangSlots(model.info, S + 2, device="cpu", max_tokens=N)
    # captured once, before any request (SGLang's start-up capture: no step, inert tables)
    graph = make_fx(lambda x, b: plugin_forward(model, slots, None, b)(x))(torch.zeros(N, D), slots.tables.buffers)
    streams: list[torch.Tensor] = []
    records: dict[str, list[Any]] = {}
    replayed = eager = 0
    for p in passes:
        lens = None if p.decode else [r[3] for r in p.rows]
        step = slots.prepare(
            [r[0] for r in p.rows], [r[1] for r in p.rows], [r[2] for r in p.rows],
            decode=p.decode, num_tokens=N, extend_lens=lens,
        )  # fmt: skip
        if step.eager:  # SGLang's graph runners decline it: the eager forward
            x = plugin_forward(model, slots, step)(p.x.clone())
            eager += 1
        else:
            x = graph(p.x.clone(), slots.tables.buffers)
            replayed += 1
        streams.append(x[: p.last[-1] + 1])
        for (rid, *_), rec in zip(p.rows, slots.records(step), strict=True):
            records.setdefault(rid, []).append(rec)
        slots.free(p.leaves)  # SGLang frees the finished requests' rows
    return {"streams": streams, "records": records, "replayed": replayed, "eager": eager, "slots": slots}


def extra_requests() -> list[Req]:
    """Requests the tables refuse for a graph reason (two of one kind): they run on the eager path."""
    two = [{"kind": "suppress", "layers": [1], "target": "random", "rate": 0.5}, {"kind": "suppress", "layers": [2]}]
    return [Req(f"two{k}", EngineSettings(layers=[2], interventions=two, seed=7 + k), 12 + 9 * k, 2, 7) for k in (0, 1)]


@pytest.fixture(scope="module")
def run() -> dict[str, Any]:
    model = StandIn(L, D, INTER, seed=0)
    passes = sglang_passes(mixed_requests(L, D) + extra_requests())
    ref_streams, ref_records = reference(model, passes)
    got = run_plugin(model, passes)
    return {"passes": passes, "ref_streams": ref_streams, "ref_records": ref_records, **got}


def _no_active(rec: Any) -> Any:
    """A record without what only the plugin's probe answer says (its slot count and features; checked below)."""
    if rec and "caps" in rec:
        caps_ = {k: v for k, v in rec["caps"].items() if k != "active_slots"}
        return {**rec, "caps": {**caps_, "features": []}}
    return rec


def test_captured_once_and_eager_passes_equal_the_reference_runtime(run: dict[str, Any]) -> None:
    assert len(run["passes"]) >= 40 and run["replayed"] >= 15 and run["eager"] >= 10  # both paths ran
    for a, b in zip(run["ref_streams"], run["streams"], strict=True):
        assert torch.equal(a, b)
    got = {rid: [_no_active(r) for r in recs] for rid, recs in run["records"].items()}
    assert got == run["ref_records"]
    # not vacuous: interventions acted on both paths, errors and the probe came back
    reports = [rec["r"] for recs in got.values() for rec in recs if rec and "r" in rec]
    for kind, field in (("erss", "fires"), ("static_steer", "steered_tokens")):
        assert any(r.get(kind, {}).get(field) for r in reports)
    assert any(sum(r.get("alrr", {}).get("passes_accepted", [0])) for r in reports)
    assert any(sum(r.get("suppress", {}).get("suppressed_tokens", [0, 0])) for r in reports)
    assert "calibration" in got["r0.8"][-1]["e"] and "do not exist" in got["r1.9"][-1]["e"]
    assert all(rec is None for rec in got["plain0"])  # a request without settings: no record of its own


def test_paths_release_and_active_slots(run: dict[str, Any]) -> None:
    slots: SGLangSlots = run["slots"]
    probe = run["records"]["r0.0"][0]["caps"]
    assert probe == {**caps(features=("prune",)), "active_slots": probe["active_slots"]} and probe["active_slots"] >= 0
    assert {k: v for k, v in probe.items() if k != "active_slots"} == caps(features=("prune",))
    slots.prepare([], [], [], decode=True, num_tokens=0)  # the last frees are released before the next pass
    assert slots.active_slots() == 0
    assert not slots.tables.buffers.records.want.any()  # every row inert again


def test_routing_and_declining_graphs() -> None:
    model = StandIn(L, D, INTER, seed=0)
    slots = SGLangSlots(model.info, 6, device="cpu", max_tokens=N)
    alrr = EngineSettings(layers=[1], interventions=[{"kind": "alrr", "layers": [1]}])
    sae = EngineSettings(interventions=[{"kind": "sae_ablate", "sae": "x.safetensors", "layer": 1, "features": [0]}])
    erss = EngineSettings(layers=[1], interventions=[{"kind": "erss", "layers": [2]}])
    step = slots.prepare(["a", "b", "c", "d"], [1, 2, 3, 4], [erss, None, alrr, sae], decode=True, num_tokens=4)
    assert step.paths == ["graph", None, "eager", "eager"] and step.eager and slots.active_slots() == 3
    assert slots.tables.buffers.tokens.slot[:4].tolist() == [1, 0, 0, 0]  # eager and plain rows: inert
    plugin_forward(model, slots, step)(torch.randn(4, D))
    recs = slots.records(step)
    assert recs[1] is None and "n" in recs[0] and "n" in recs[2]
    assert "sae_ablate" in recs[3]["e"]  # no --sae-dir here: the request's error, as before
    # the next pass of the graph request alone replays; a freed slot's request is gone
    slots.free([3, 4])
    step = slots.prepare(["a"], [1], [erss], decode=True, num_tokens=1)
    assert not step.eager and slots.active_slots() == 1


def test_a_row_whose_norms_were_not_written_gets_an_error_not_a_gap() -> None:
    model = StandIn(L, D, INTER, seed=0)
    slots = SGLangSlots(model.info, 4, device="cpu", max_tokens=N)
    s = EngineSettings(layers=[0, 2])
    alrr = EngineSettings(layers=[2], interventions=[{"kind": "alrr", "mode": "static", "layers": [1]}])
    step = slots.prepare(["a", "b"], [1, 2], [s, alrr], decode=True, num_tokens=2)
    recs = slots.records(step)  # the forward never ran (e.g. a replay of a graph without the step)
    for rec in recs:
        assert "n" not in rec and "were not recorded" in rec["e"]
    step = slots.prepare(["a", "b"], [1, 2], [s, alrr], decode=True, num_tokens=2)
    plugin_forward(model, slots, step)(torch.randn(2, D))
    recs = slots.records(step)
    assert all(
        "e" not in r and len(r["n"]) == k and all(math.isfinite(v) for v in r["n"]) for r, k in zip(recs, (2, 1))
    )


def test_self_certainty_is_added_after_the_forward() -> None:
    model = StandIn(L, D, INTER, seed=0)
    slots = SGLangSlots(model.info, 4, device="cpu", max_tokens=N)
    step = slots.prepare(["a", "b"], [1, 2], [EngineSettings(sc=True), None], decode=False, num_tokens=5,
                         extend_lens=[3, 2])  # fmt: skip
    plugin_forward(model, slots, step)(torch.randn(5, D))
    recs = slots.records(step, torch.randn(2, 9))
    assert set(recs[0]) == {"sc"} and recs[1] is None
    step = slots.prepare(["a"], [1], [EngineSettings(sc=True)], decode=True, num_tokens=1)
    assert "no logits row" in slots.records(step, None)[0]["e"]


def test_runtime_glue_prepares_from_a_forward_batch_and_fills_records_after_the_forward(monkeypatch) -> None:
    """``prepare_step`` / ``fill_records`` with stand-ins for SGLang's ``ForwardBatch`` and logits output: the
    records go into a new ``customized_info`` dict (a replay's output shares its capture's), a pass the plugin
    did not prepare gives its rows with settings an error record, a plain pass sets nothing."""
    from types import SimpleNamespace

    from l2reason_sglang import runtime as rt

    from l2reason.serving.settings import TOKEN_KEY

    model = StandIn(L, D, INTER, seed=0)
    slots = SGLangSlots(model.info, 4, device="cpu", max_tokens=N)
    settings = {"a": EngineSettings(layers=[2]), "b": None}
    monkeypatch.setattr(rt, "settings_for", lambda rid: settings.get(rid))

    def mode(decode: bool) -> Any:
        return SimpleNamespace(
            is_idle=lambda: False, is_decode=lambda: decode, is_extend=lambda: not decode, is_mixed=lambda: False
        )

    fb = SimpleNamespace(
        rids=["a", "b"], forward_mode=mode(False), input_ids=torch.zeros(5, dtype=torch.long),
        req_pool_indices_cpu=None, req_pool_indices=torch.tensor([2, 3]), extend_seq_lens_cpu=[3, 2],
    )  # fmt: skip
    inner = SimpleNamespace(_l2r_slots=slots, _l2r_done=None, _l2r_step=None)
    inner._l2r_done = step = rt.prepare_step(slots, fb)
    assert step.paths == ["graph", None] and slots.tables.buffers.tokens.slot[:5].tolist() == [0, 0, 2, 0, 0]
    plugin_forward(model, slots, step)(torch.randn(5, D))
    captured: dict[str, Any] = {"other": [1, 2]}
    out = SimpleNamespace(customized_info=captured, next_token_logits=None)
    rt.fill_records(inner, fb, out)
    assert out.customized_info is not captured and captured == {"other": [1, 2]}
    recs = out.customized_info[TOKEN_KEY]
    assert len(recs[0]["n"]) == 1 and recs[1] is None and out.customized_info["other"] == [1, 2]
    out = SimpleNamespace(customized_info=None, next_token_logits=None)
    rt.fill_records(inner, fb, out)  # nothing prepared for this pass
    assert "not prepared" in out.customized_info[TOKEN_KEY][0]["e"] and out.customized_info[TOKEN_KEY][1] is None
    plain = SimpleNamespace(**{**vars(fb), "forward_mode": mode(True), "rids": ["c", "d"]})  # new requests
    inner._l2r_done = rt.prepare_step(slots, plain)
    assert slots.active_slots() == 0  # "a" left its slot to "c", which asked for nothing
    out = SimpleNamespace(customized_info=None, next_token_logits=None)
    rt.fill_records(inner, plain, out)  # a plain pass: SGLang's own output, untouched
    assert out.customized_info is None
