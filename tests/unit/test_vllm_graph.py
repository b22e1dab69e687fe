"""The vLLM plugin's graph handling without vLLM: its compilation settings, the routing, the traced path's plumbing.

- :func:`l2reason_vllm.graphs.configure_compilation` on a config with vLLM's
  fields: the eager op becomes a splitting op next to vLLM's own, and a mode
  that would capture it inside a FULL graph (where it runs only at capture)
  is refused, never served.
- Which requests take the traced step and which the eager op.
- :class:`l2reason_vllm.runtime.WorkerState` over a simulated run (prefills
  of several tokens, decodes, a plain request in the batch, a finished
  request whose slot a new one reuses, a probe): the traced path (tables,
  :func:`graph_step`) gives the records the eager path
  (:class:`~l2reason.serving.SlotRuntime`) gives, the token map is inert
  after every step (a dummy run of the engine touches no request), and
  slots come back.
- The per-request record count: a finished request's list is whole.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from l2reason.errors import ConfigError
from l2reason.serving.graph import graph_step
from l2reason.serving.settings import SETTINGS_KEY, EngineSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integrations" / "vllm"))

from l2reason_vllm import runtime
from l2reason_vllm.graphs import (
    OP,
    TRACEABLE_KINDS,
    PluginConfig,
    configure_compilation,
    read_config,
    route,
)
from l2reason_vllm.runtime import CHUNK, DECODE, PREFILL, RowInfo, WorkerState, close_records


class Mode(enum.Enum):
    """vLLM 0.32's ``CUDAGraphMode`` (config/compilation.py), its two predicates as vLLM defines them."""

    NONE = (0,)
    PIECEWISE = (1,)
    FULL = (2,)
    FULL_DECODE_ONLY = (2, 0)
    FULL_AND_PIECEWISE = (2, 1)

    def has_full_cudagraphs(self) -> bool:
        return self.value[0] == 2

    def has_piecewise_cudagraphs(self) -> bool:
        return self.value[0] == 1 or self.value == (2, 1)


ATTENTION = ["vllm::unified_attention_with_output", "vllm::unified_kv_cache_update"]


def compilation(mode: Mode) -> SimpleNamespace:
    return SimpleNamespace(cudagraph_mode=mode, splitting_ops=list(ATTENTION))


def test_the_eager_op_runs_between_graph_pieces_and_a_full_graph_around_it_is_refused():
    cc = compilation(Mode.PIECEWISE)
    line = configure_compilation(cc, PluginConfig())
    assert cc.splitting_ops == [*ATTENTION, OP]  # vLLM's own kept, ours added once
    configure_compilation(cc, PluginConfig())
    assert cc.splitting_ops.count(OP) == 1
    assert "PIECEWISE" in line and "eagerly between the replayed pieces" in line and "ALRR" in line
    for mode in (Mode.FULL, Mode.FULL_AND_PIECEWISE, Mode.FULL_DECODE_ONLY):
        with pytest.raises(ConfigError, match="runs only at capture"):
            configure_compilation(compilation(mode), PluginConfig())
    line = configure_compilation(compilation(Mode.NONE), PluginConfig())  # the CPU build
    assert "no CUDA graphs (NONE)" in line and "graph step traced into the compiled forward (norms)" in line
    eager = SimpleNamespace(mode=SimpleNamespace(name="NONE"), **vars(compilation(Mode.NONE)))  # --enforce-eager
    assert "graph step run as Python (not compiled) (norms)" in configure_compilation(eager, PluginConfig())
    no_op = compilation(Mode.FULL_AND_PIECEWISE)  # without the eager op a full graph holds the traced step
    assert "no eager op" in configure_compilation(no_op, PluginConfig(eager=False))
    assert no_op.splitting_ops == ATTENTION
    pw = SimpleNamespace(cudagraph_mode=Mode.PIECEWISE, splitting_ops=None)
    with pytest.raises(ConfigError, match="splitting_ops"):
        configure_compilation(pw, PluginConfig())


REAL_VLLM = """
from vllm.config import CompilationConfig, CompilationMode, CUDAGraphMode, KVTransferConfig
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
from l2reason.errors import ConfigError
from l2reason_vllm.graphs import OP, PluginConfig, configure_compilation
from l2reason_vllm.launch import KV_TRANSFER_CONFIG

kv = KVTransferConfig(**KV_TRANSFER_CONFIG)
cls = KVConnectorFactory.get_connector_class(kv)  # what VllmConfig.__post_init__ asks (config/vllm.py)
assert kv.is_kv_transfer_instance and cls.__name__ == "L2ReasonConnector"
assert cls.requires_piecewise_for_cudagraph(kv.kv_connector_extra_config) is True
cc = CompilationConfig(mode=CompilationMode.VLLM_COMPILE, cudagraph_mode=CUDAGraphMode.PIECEWISE)
cc.set_splitting_ops_for_v1(all2all_backend="naive")
own = list(cc.splitting_ops)
print(configure_compilation(cc, PluginConfig()))
assert cc.splitting_ops == own + [OP] and own, cc.splitting_ops
try:
    configure_compilation(CompilationConfig(cudagraph_mode=CUDAGraphMode.FULL_AND_PIECEWISE), PluginConfig())
    raise SystemExit("a FULL mode was accepted")
except ConfigError:
    pass
print("ok")
"""


def test_against_vllms_own_config_classes():
    """vLLM's classes, in vLLM's environment (``$L2REASON_VLLM_PYTHON``; skipped without it): the connector vLLM's
    config resolves is the plugin's and asks for PIECEWISE graphs; the op joins vLLM's default splitting ops."""
    import os
    import subprocess

    py = os.environ.get("L2REASON_VLLM_PYTHON")
    if not py:
        pytest.skip("no vLLM environment ($L2REASON_VLLM_PYTHON)")
    out = subprocess.run([py, "-c", REAL_VLLM], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
    assert "eagerly between the replayed pieces" in out.stdout


def test_settings_and_routing():
    assert read_config(None) == PluginConfig() and read_config({"other": 1}) == PluginConfig()
    assert read_config({"l2reason": {"kinds": [], "eager": False}}) == PluginConfig(kinds=(), eager=False)
    for bad, msg in (({"kinds": ["alrr"]}, "cannot be traced"), ({"kind": []}, "unknown settings"), ([1], "object")):
        with pytest.raises(ConfigError, match=msg):
            read_config({"l2reason": bad})
    assert PluginConfig().kinds == ()  # norms only, until the interventions' compile cost is paid by choice
    cfg = PluginConfig(kinds=("erss", "static_steer"))
    assert route(None, cfg) is None and route(ConfigError("x"), cfg) is None
    assert route(EngineSettings(layers=[1]), cfg) == "traced"
    assert route(EngineSettings(interventions=[{"kind": "erss"}]), cfg) == "traced"
    assert route(EngineSettings(interventions=[{"kind": "suppress"}]), cfg) == "eager"  # not traced here
    assert route(EngineSettings(interventions=[{"kind": "alrr"}, {"kind": "erss"}]), cfg) == "eager"
    sae = {"kind": "sae_ablate", "sae": "a.safetensors", "layer": 1, "features": [0]}
    assert route(EngineSettings(interventions=[sae]), cfg) == "eager"


def test_a_finished_request_gets_one_record_per_token():
    recs: list[Any] = [{"n": [1.0]}, {"n": [2.0]}]
    assert close_records(recs, 2) is None and len(recs) == 2  # the last one came already
    at = close_records(recs, 3)  # the last token's record comes just after request_finished
    assert at == 2 and len(recs) == 3 and "did not come back" in recs[2]["e"]
    short: list[Any] = [{"n": [1.0]}]
    assert close_records(short, 4) == 3 and len(short) == 4
    assert all("records for the first 3 tokens" in r["e"] for r in short[:3])


# ---- the traced path against the eager one, through WorkerState ------------------------------------------------

L, D, BS = 3, 8, 4  # layers, hidden size, KV block size


class Tiny(torch.nn.Module):
    """A stand-in decoder: per layer ``o = tanh(W x)``, ``r = x``; the stream after it is ``o + r``."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(D, D, bias=False) for _ in range(L))
        with torch.no_grad():
            for lin in self.layers:
                lin.weight.copy_(torch.randn(D, D, generator=g) / D**0.5)

    def forward(self, ws: WorkerState, x: torch.Tensor) -> torch.Tensor:
        """The plugin's layer loop (l2reason_vllm.models.l2_model_forward), the stand-in's layers."""
        pos = torch.arange(x.shape[0])
        for i, lin in enumerate(self.layers):
            o, r = torch.tanh(lin(x)), x.clone()
            if ws.config.eager:  # in the plugin an opaque custom op; here its body, called directly
                ws.after_layer(o, r, pos, i)
            if ws.tables is not None:
                o, r = graph_step(ws.tables, i, o, r, buffers=runtime.table_buffers(self))
            x = o + r
        return x


STEER = {"kind": "static_steer", "vectors": {1: [0.3] * D}, "alpha": 2.0}
ERSS = {"kind": "erss", "layers": [2], "S": 1, "p": 1.0, "C": 0, "c_min": -1.0, "threshold": {"warmup": 1}}
SUPPRESS = {"kind": "suppress", "target": "random", "rate": 0.5, "layers": [0, 2]}


def enc(**kw: Any) -> str:
    return EngineSettings(**kw).encode()[SETTINGS_KEY]


def schedule() -> list[tuple[dict[str, RowInfo], set[str], list[int]]]:
    """Per step: the rows (batch order), the requests finished before it, and each row's KV slots."""
    a = enc(layers=[0, 2], interventions=[STEER, ERSS], seed=3)
    b = enc(layers=[1], interventions=[SUPPRESS], seed=4, probe=True)
    c = enc(layers=[0, 1, 2])
    steps: list[tuple[dict[str, RowInfo], set[str], list[int]]] = []
    rows = {"a": RowInfo(PREFILL, [1, 2, 7], a), "p": RowInfo(PREFILL, [5]), "b": RowInfo(CHUNK, [3], b)}
    steps.append((rows, set(), [*range(4, 9), *range(20, 23), *range(12, 14)]))
    rows = {"a": RowInfo(DECODE, [1, 2, 7]), "p": RowInfo(DECODE, [5]), "b": RowInfo(PREFILL, [3])}
    steps.append((rows, set(), [9, 23, 14, 15]))
    for k in range(3):
        rows = {"a": RowInfo(DECODE, [1, 2, 7]), "b": RowInfo(DECODE, [3, 4])}
        steps.append((rows, set(), [(10, 11, 28)[k], 16 + k]))
    rows = {"a": RowInfo(DECODE, [1, 2, 7]), "c": RowInfo(PREFILL, [6], c)}  # c takes b's slot
    steps.append((rows, {"b", "p"}, [29, 24, 25, 26]))
    rows = {"a": RowInfo(DECODE, [1, 2, 7]), "c": RowInfo(DECODE, [6])}
    steps.append((rows, set(), [30, 27]))
    return steps


def simulate(
    monkeypatch: pytest.MonkeyPatch, config: PluginConfig, max_tokens: int = 16
) -> tuple[list[dict[str, Any]], WorkerState]:
    """The schedule through a worker; ``max_tokens=0``: no tables (the plugin before the traced step)."""
    ws, model = WorkerState(), Tiny()
    ws.setup(model, num_layers=L, hidden_size=D, max_seqs=3, block_size=BS, max_tokens=max_tokens, config=config)
    g = torch.Generator().manual_seed(1)
    out = []
    for rows, finished, slots in schedule():
        monkeypatch.setattr(runtime, "_slot_mapping", lambda s=slots: torch.tensor(s))
        ws.bind(rows, finished)
        with torch.no_grad():
            model(ws, torch.randn(len(slots), D, generator=g))
        out.append(ws.take_records())
        tok = ws.tables.buffers.tokens if ws.tables is not None else None
        assert tok is None or not tok.slot.any()  # inert between steps
    return out, ws


def test_the_traced_path_gives_the_eager_paths_records(monkeypatch):
    torch.set_num_threads(1)
    traced, ws = simulate(monkeypatch, PluginConfig(kinds=TRACEABLE_KINDS))
    eager, _ = simulate(monkeypatch, PluginConfig())  # norms traced, every intervention on the eager op
    reference, _ = simulate(monkeypatch, PluginConfig(), max_tokens=0)  # no tables: SlotRuntime alone
    assert eager == reference  # an eager request's norms, recorded by the traced step after the op: the same
    assert ws.counts["op_work"] == 0  # the traced run never needed the op
    assert [sorted(r) for r in traced] == [
        ["a"],
        ["a", "b"],
        ["a", "b"],
        ["a", "b"],
        ["a", "b"],
        ["a", "c"],
        ["a", "c"],
    ]
    for t, e in zip(traced, eager, strict=True):
        assert t.keys() == e.keys()
        for rid in t:
            assert t[rid].keys() == e[rid].keys(), rid
            torch.testing.assert_close(torch.tensor(t[rid].get("n", [])), torch.tensor(e[rid].get("n", [])))
            assert t[rid].get("r") == e[rid].get("r") and t[rid].get("caps") == e[rid].get("caps")
    a, b = traced[-1]["a"]["r"], traced[4]["b"]["r"]
    assert a["static_steer"]["steered_tokens"] == 6 and a["erss"]["fires"] > 0 and b["suppress"]["suppressed_tokens"]
    assert traced[1]["b"]["caps"]["active_slots"] == 1  # the probe: request a holds the other slot
    assert sorted(ws.slot_of) == ["a", "c"] and ws.path == {"a": "traced", "c": "traced"}
    ws.bind({}, {"a", "c"})
    assert ws.slot_of == {} and len(ws.free) == 3 and not ws.tables._hosts  # type: ignore[union-attr]


def test_a_server_without_the_eager_op_refuses_what_only_the_op_runs(monkeypatch):
    out, ws = simulate(monkeypatch, PluginConfig(kinds=("static_steer",), eager=False))
    assert ws.counts["op"] == 0  # no op in this forward
    a, b = out[1]["a"], out[1]["b"]  # a: steering (traced) + ERSS (not traced); b: suppression (not traced)
    assert "runs no eager op" in a["e"] and "runs no eager op" in b["e"] and "n" not in b


ROWS = {"a": RowInfo(PREFILL, [1], enc(layers=[0, 2]))}
X = torch.randn(3, D, generator=torch.Generator().manual_seed(2))


def start() -> tuple[WorkerState, Tiny]:
    """A fresh worker (new model, new tables) with request ``a`` bound, as ``runtime.STATE``."""
    ws, model = WorkerState(), Tiny()
    ws.setup(model, num_layers=L, hidden_size=D, max_seqs=2, block_size=BS, max_tokens=8, config=PluginConfig())
    ws.config = PluginConfig(eager=False)  # the op's Python is not what this is about
    runtime._slot_mapping = lambda: torch.tensor([4, 5, 6])  # type: ignore[assignment]
    ws.bind(ROWS, set())
    runtime.STATE = ws
    return ws, model


def forward(model: Tiny, x: torch.Tensor) -> torch.Tensor:
    return model(runtime.STATE, x)  # the worker's state is a global, as in l2reason_vllm.models


def later_start(path: str) -> list[float]:
    """A later start of the engine: a new worker loads the saved forward, runs it, and reads its records."""
    torch.set_num_threads(1)
    ws, model = start()
    with open(path, "rb") as f:
        loaded = torch.compiler.load_compiled_function(f)
    loaded(model, X)
    return ws.take_records()["a"]["n"]


def test_a_compiled_forward_loaded_from_the_compile_cache_still_writes_the_live_tables(tmp_path, monkeypatch):
    """vLLM saves the compiled forward (AOT compile) and a later start, another process, loads it: the loaded
    forward must write the new worker's tables (the step reads them from the model's buffers, ``register_tables``),
    not copies saved with the artifact."""
    import json
    import subprocess

    if not hasattr(torch.compiler, "load_compiled_function"):
        pytest.skip("this torch has no AOT compile")
    torch.set_num_threads(1)
    monkeypatch.setattr(runtime, "STATE", runtime.STATE)
    monkeypatch.setattr(runtime, "_slot_mapping", runtime._slot_mapping)
    ws, model = start()
    model(ws, X)
    want = ws.take_records()["a"]["n"]
    _, model = start()
    no_guards = {"guard_filter_fn": torch.compiler.skip_all_guards_unsafe}  # as vLLM compiles
    compiled = torch.compile(forward, fullgraph=True, backend="inductor", dynamic=True, options=no_guards)
    compiled.aot_compile(((model, X), {})).save_compiled_function(str(tmp_path / "forward"))
    here = Path(__file__).parent
    code = f"import json, sys; sys.path.insert(0, {str(here)!r}); import test_vllm_graph as t; "
    code += f"print(json.dumps(t.later_start({str(tmp_path / 'forward')!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    torch.testing.assert_close(torch.tensor(json.loads(out.stdout.strip().splitlines()[-1])), torch.tensor(want))
