"""The graph-safe step: one controller core, traced once, replayed for any mix of requests.

Three proofs on one simulated continuous-batching run (requests joining with
a prefill, decoding, leaving; slots reused; plain requests and padding in
the batch; every intervention, alone and combined; two requests that fail):

- the eager :func:`graph_step` equals the reference :class:`SlotRuntime` and
  its controllers (streams bit-equal, records equal: norms, reports, errors);
- a graph traced ONCE at start-up with ``make_fx`` (inert tables) and
  replayed over the whole run equals the eager step: nothing was decided in
  Python at trace time;
- ``torch.compile(fullgraph=True)`` has no graph break, and changing the
  tables' contents (requests joining and leaving) never recompiles.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._pytree import tree_leaves

from l2reason.serving.graph import SlotTables, graph_step
from l2reason.serving.graph.check import (
    Req,
    StandIn,
    Trace,
    compare,
    eager_forward,
    mixed_requests,
    run_reference,
    run_tables,
    schedule,
)
from l2reason.serving.settings import EngineSettings

L, D, INTER, S, N = 3, 7, 11, 8, 16  # odd, distinct sizes so a transposed shape fails


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Tiny tensors: more threads only contend (and the test machine's cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def new_tables(model: StandIn, **kw: Any) -> SlotTables:
    return SlotTables(model.info, num_slots=S, max_tokens=N, bank=4, alrr_layers=[0, 1], alrr_passes=2, **kw)


@pytest.fixture(scope="module")
def run() -> dict[str, Any]:
    model = StandIn(L, D, INTER, seed=0)
    steps = schedule(mixed_requests(L, D), num_slots=S, tokens=N, hidden=D, seed=1)
    ref = run_reference(model, steps, num_slots=S)
    tables = new_tables(model)
    eager = run_tables(model, steps, tables, eager_forward(model, tables))
    return {"model": model, "steps": steps, "ref": ref, "eager": eager}


def _last(trace: Trace, rid: str) -> dict[str, Any]:
    rec = trace.records[rid][-1]
    assert rec is not None
    return rec


def test_eager_step_equals_the_reference_runtime(run: dict[str, Any]) -> None:
    c = compare(run["ref"], run["eager"])
    assert c["steps"] >= 30
    assert c["streams_equal"], c
    assert c["records_equal"], c["first_record_diff"]
    # not vacuous: every intervention acted, slots were reused, errors and probes came back
    eager = run["eager"]
    reports = [rec["r"] for recs in eager.records.values() for rec in recs if rec and "r" in rec]
    assert any(r.get("erss", {}).get("injections") for r in reports)
    assert any(sum(r.get("alrr", {}).get("passes_accepted", [0])) for r in reports)
    assert any(sum(r.get("suppress", {}).get("suppressed_tokens", [0])) for r in reports)
    assert any(r.get("static_steer", {}).get("steered_tokens") for r in reports)
    assert "calibration" in _last(eager, "r0.8")["e"] and "n" in _last(eager, "r0.8")
    assert "do not exist" in _last(eager, "r1.9")["e"]
    assert "caps" in eager.records["r0.0"][0] and "caps" not in eager.records["r0.0"][1]
    joined = [row.slot for st in run["steps"] for row in st.joins if row.slot]
    assert len(joined) > len(set(joined))  # slots were reused by new requests


def _traced(model: StandIn, tables: SlotTables, alrr: bool) -> Any:
    """The whole forward (every layer and its step) traced once, the tables' buffers as inputs."""

    def fwd(x: torch.Tensor, buffers: Any) -> torch.Tensor:
        return eager_forward(model, tables, buffers)(x, alrr)

    return make_fx(fwd)(torch.zeros(N, D), tables.buffers)


def test_traced_once_replays_the_whole_run(run: dict[str, Any]) -> None:
    model = run["model"]
    tables = new_tables(model)  # inert at trace time: a value decided in Python would be the inert one
    graphs = {alrr: _traced(model, tables, alrr) for alrr in (False, True)}
    assert not any("index_put_" not in g.code for g in graphs.values())  # state written in the graph itself
    replay = run_tables(model, run["steps"], tables, lambda x, alrr: graphs[alrr](x, tables.buffers))
    c = compare(run["eager"], replay)
    assert c["streams_equal"] and c["records_equal"], c
    assert c["steps"] >= 30


def _row0(tables: SlotTables) -> list[torch.Tensor]:
    """Every buffer's inert row: slot 0, ERSS row 0, steering-vector row 0."""
    b = tables.buffers
    th = b.thresholds
    rows = [b.seed[0], b.records.want[0], b.records.norms[0], th.warmup[:, 0], th.k[:, 0], th.min_iqr[:, 0]]
    rows += [th.calibrated[:, 0], th.fixed[:, :, 0], *(t[:, :, 0] for t in tree_leaves(th.state))]
    for table in (b.steer, b.suppress, b.erss, b.alrr):
        for name, t in table._asdict().items():
            if table is b.steer and name == "bank":
                rows.append(t[0])
            elif name.startswith("bank"):
                rows.append(t[:, 0])  # [L, E, ...]: ERSS row 0
            else:
                rows.append(t[0] if t.shape[0] == S else t[:, 0])  # [S, ...] or [L, S]
    return [r.clone() for r in rows]


def test_inert_row_and_idle_step_change_nothing(run: dict[str, Any]) -> None:
    model = run["model"]
    tables = new_tables(model)
    before = _row0(tables)
    run_tables(model, run["steps"], tables, eager_forward(model, tables))
    for a, b in zip(before, _row0(tables), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    # a step where nobody asks for anything: o and r come back bit-identical
    fresh = new_tables(model)
    fresh.bind_step(torch.zeros(N, dtype=torch.long), decode=True)
    o, r = torch.randn(N, D), torch.randn(N, D)
    o2, r2 = graph_step(fresh, 1, o.clone(), r.clone(), rerun=model.rerun(1))
    assert torch.equal(o2, o) and torch.equal(r2, r)


class _Counting:
    """A torch.compile backend that counts compilations (then runs the graph as aot_eager does)."""

    def __init__(self) -> None:
        self.compiles = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        from torch._dynamo.backends.debugging import aot_eager

        self.compiles += 1
        return aot_eager(gm, example_inputs)


def test_compiles_fullgraph_once_per_variant_while_requests_come_and_go(run: dict[str, Any]) -> None:
    model = run["model"]
    steps = run["steps"][:14]  # joins (ALRR among them), leaves and a reused slot happen in these
    assert any(row.slot in st.leaves for i, st in enumerate(steps) for later in steps[i + 1 :] for row in later.joins)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    layer = 1  # an ALRR layer every kind can act at
    backends = {alrr: _Counting() for alrr in (False, True)}
    tables = new_tables(model)

    def at(alrr: bool) -> Any:
        def step(o: torch.Tensor, r: torch.Tensor, buffers: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return graph_step(tables, layer, o, r, rerun=model.rerun(layer) if alrr else None, buffers=buffers)

        return torch.compile(step, fullgraph=True, backend=backends[alrr])

    compiled = {alrr: at(alrr) for alrr in (False, True)}

    def forward(x: torch.Tensor, alrr: bool) -> torch.Tensor:
        for i in range(L):
            o, r = model.mlp(i, x), x.clone()
            if i == layer:
                o, r = compiled[alrr](o, r, tables.buffers)
            else:
                o, r = graph_step(tables, i, o, r, rerun=model.rerun(i) if alrr else None)
            x = o + r
        return x

    got = run_tables(model, steps, tables, forward)
    ref_tables = new_tables(model)
    want = run_tables(model, steps, ref_tables, eager_forward(model, ref_tables))
    c = compare(want, got)
    assert c["records_equal"] and c["stream_max_abs_diff"] < 1e-5, c
    assert {alrr: b.compiles for alrr, b in backends.items()} == {False: 1, True: 1}
    assert not torch._dynamo.utils.counters["graph_break"]


def test_interpolate_injection_matches_up_to_rounding() -> None:
    model = StandIn(L, D, INTER, seed=3)
    erss = {"kind": "erss", "layers": [1, 2], "S": 2, "p": 1.0, "C": 1, "c_min": -1.0, "M": 3, "beta": 0.3,
            "injection": "interpolate", "threshold": {"warmup": 2, "k": 0.0}}  # fmt: skip
    reqs = [Req(f"i{i}", EngineSettings(layers=[1, 2], interventions=[erss], seed=i), 2 * i, 2, 14) for i in range(3)]
    steps = schedule(reqs, num_slots=S, tokens=N, hidden=D, seed=2)
    ref = run_reference(model, steps, num_slots=S)
    tables = new_tables(model)
    got = run_tables(model, steps, tables, eager_forward(model, tables))
    assert any(recs[-1]["r"]["erss"]["injections"] for recs in got.records.values())  # type: ignore[index]
    for a, b in zip(ref.streams, got.streams, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    for rid, recs in ref.records.items():
        for ra, rb in zip(recs, got.records[rid], strict=True):
            assert ra is not None and rb is not None and ra["r"] == rb["r"]
            assert ra["n"] == pytest.approx(rb["n"], rel=1e-5)


def test_norms_only_server_equals_the_reference() -> None:
    """A server built for norm capture only (no intervention compiled in) records the same norms."""
    model = StandIn(L, D, INTER, seed=4)
    reqs = [q for q in mixed_requests(L, D, rounds=1) if q.settings is None or not q.settings.interventions]
    steps = schedule(reqs, num_slots=S, tokens=N, hidden=D, seed=5)
    tables = new_tables(model, kinds=[])
    c = compare(
        run_reference(model, steps, num_slots=S), run_tables(model, steps, tables, eager_forward(model, tables))
    )
    assert c["streams_equal"] and c["records_equal"], c


def test_admission_refuses_what_the_graph_cannot_run_and_says_what_to_do() -> None:
    model = StandIn(L, D, INTER, seed=0)
    t = SlotTables(model.info, num_slots=3, max_tokens=4, erss_rows=1, vectors=1, bank=4, alrr_layers=[1])
    sup = {"kind": "suppress", "layers": [1]}
    cases = {
        "at most one suppress": [sup, sup],
        "swap them": [sup, {"kind": "erss", "layers": [1]}],
        "alrr_passes=1": [{"kind": "alrr", "K": 2, "layers": [1]}],
        "alrr_layers": [{"kind": "alrr", "layers": [2]}],
        "bank=4": [{"kind": "erss", "M": 32}],
        "steering vectors": [{"kind": "static_steer", "vectors": {1: [0.0] * D, 2: [0.0] * D}}],
    }
    for msg, ivs in cases.items():
        err = t.admit(1, EngineSettings(layers=[0], interventions=ivs))
        assert err is not None and msg in err, (msg, err)
        t.bind_step(torch.tensor([1]), decode=True)
        o, r = torch.randn(1, D), torch.randn(1, D)
        graph_step(t, 0, o, r)
        [rec] = t.read_records([1], [True])
        assert (
            rec is not None
            and rec["e"] == err
            and "r" not in rec
            and rec["n"] == [pytest.approx(float((o + r).norm()))]
        )
    # rows are given back: one ERSS row, taken and freed again and again
    for _ in range(3):
        assert t.admit(1, EngineSettings(interventions=[{"kind": "erss", "M": 4}])) is None
        assert "ERSS rows" in (t.admit(2, EngineSettings(interventions=[{"kind": "erss", "M": 4}])) or "")
        t.release(1)
    only = SlotTables(model.info, num_slots=3, max_tokens=4, kinds=["suppress"], layers=[1])
    assert "not erss" in (only.admit(1, EngineSettings(interventions=[{"kind": "erss", "layers": [1]}])) or "")
    assert "not [2]" in (only.admit(1, EngineSettings(interventions=[{"kind": "suppress", "layers": [2]}])) or "")
    with pytest.raises(Exception, match="slots 1..2"):
        t.release(0)
    with pytest.raises(Exception, match="max_tokens"):
        t.bind_step(torch.zeros(5, dtype=torch.long), decode=True)


def test_buffers_are_written_in_place_never_reallocated(run: dict[str, Any]) -> None:
    model = run["model"]
    tables = new_tables(model)
    ptrs = [t.data_ptr() for t in tree_leaves(tables.buffers)]
    run_tables(model, run["steps"][:10], tables, eager_forward(model, tables))
    assert ptrs == [t.data_ptr() for t in tree_leaves(tables.buffers)]
    assert tables.nbytes > 0 and not math.isnan(tables.nbytes)
