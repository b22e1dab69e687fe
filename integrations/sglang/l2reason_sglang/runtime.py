"""SGLang glue for the l2reason step: settings in, the layer loop, records out, the graph runners.

Everything ℓ2 is :mod:`l2reason.serving` (the graph-safe tables and step,
the reference per-slot runtime) and :mod:`l2reason.techniques`; the
per-request slots are :mod:`l2reason_sglang.slots`; this file holds only what
is SGLang's (0.5.23), as hooks on its classes (installed once per process by
:func:`install_hooks` when the plugin's model is built):

- **Settings in.** A request's settings travel as one JSON string in
  ``sampling_params["custom_params"]["l2reason"]``. Attributes set on a
  ``ForwardBatch`` do not reach the model (the runner rebuilds it keeping
  declared fields only), so ``ForwardBatch.init_new``, which sees the
  scheduler's requests, records each request's decoded settings by request
  id; rows are looked up through ``forward_batch.rids``. Entries age out of
  a bounded LRU table.
- **Before each forward** (``model.prepare_for_forward``, which SGLang's
  ``ModelRunner._forward_raw`` calls eagerly before every forward, decode
  graph replays included, and before each prefill-graph capture): the
  slots SGLang freed are released, requests seen for the first time are
  admitted to their ``req_pool_indices`` slot, and the pass's token → slot
  map is bound into the tables' persistent buffer.
- **The layer loop** (:func:`l2_model_forward`) replaces the inner model's
  ``forward``: the same layers in the same order, and after every layer
  :meth:`~l2reason_sglang.slots.SGLangSlots.after_layer`: the graph step
  (fixed-shape tensor code, captured once in a decode graph and replayed for
  any mix of requests), plus, in an eager pass only, SAE ablations and the
  reference runtime for the requests that use ALRR or ``sae_ablate``.
  SGLang carries the stream as a pending pair (layer output ``o`` +
  residual ``r``; the next layer's fused add+norm forms ``o + r``); a changed
  row is written back as ``r ← x'``, ``o ← 0`` (the next add gives exactly
  ``x'``; other rows are untouched, bit for bit). A pass in which no row
  asked for anything runs the stock forward (never in a capture).
- **Graph runners.** The decode CUDA-graph runner, the prefill graph runner
  and the CPU graph runner decline (``can_run_graph`` is False) a pass that
  holds an eager request, so it runs through the eager runner: a captured
  graph holds the graph step only.
- **Records out, after the forward.** An AFTER hook on ``ModelRunner.forward``
  builds this pass's records from the tables' persistent buffers (one copy)
  and the eager plan, and sets ``LogitsProcessorOutput.customized_info["l2r"]``
  (one record per request row); SGLang appends it to the request and returns
  it as ``meta_info["l2r"]``, one entry per completion token. Never inside
  the forward: a decode replay returns the ``customized_info`` of its
  capture. Prefill records the request's last prompt position, decode each
  row's new token. A row with settings that got no record of the plugin's
  gets an error record (``"e"``), never a gap.
- **Release.** ``ReqToTokenPool.free_rows`` (a request finished, was aborted
  or retracted) marks its slot; the next ``prepare_for_forward`` releases it
  (``active_slots`` in the probe's capabilities counts the slots held).
- **Recursion without touching the KV cache** (ALRR, eager): a re-run of
  layer ``l`` writes this step's keys/values again; the plugin saves the
  rows' pass-0 entries first and puts them back after, so later tokens see
  pass-0 keys/values only (and the re-run attends to its own new ones, as in
  the embedded backend).
- **SAE ablation** (``sae_ablate``, eager): its tokens are the request's
  segment of an extend pass (the uncached prompt tokens) and its row of a
  decode pass; which SAE file (by name, from the ``--sae-dir`` folder only),
  the checks and the grouping are :mod:`l2reason.serving.ablation`'s.
  Because the ablated prompt's keys/values differ from a plain run's, the
  plugin wraps ``Req.__init__`` and gives such a request a radix-cache
  namespace of its own (``req.cache_salt``, extended with a hash of its
  ablations) before the scheduler matches its prompt.

Not supported (the launcher refuses them): pipeline parallelism, DP
attention, speculative decoding, mixed chunked prefill, ``--enable-torch-compile``.
The records are read with a blocking copy after each forward, which costs
SGLang's overlap scheduling its overlap on a GPU (not measured; CPU runs
have no overlap to lose). ``docs/sglang.md`` and ``docs/graph_step.md`` have
the rest.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import OrderedDict
from typing import Any

import torch

from l2reason.errors import ConfigError
from l2reason.serving.ablation import ablation_cache_salt
from l2reason.serving.capabilities import read_settings
from l2reason.serving.info import EngineModelInfo
from l2reason.serving.settings import SETTINGS_KEY, TOKEN_KEY, EngineSettings
from l2reason_sglang.slots import GRAPH_KINDS, SGLangSlots, Step

log = logging.getLogger("l2reason_sglang")

#: request id -> (raw settings string, decoded settings or the decoding error); least recently used first
_SETTINGS: OrderedDict[str, tuple[Any, EngineSettings | Exception]] = OrderedDict()
_SETTINGS_LOCK = threading.Lock()
_SETTINGS_CAP = 16384  # far more than any server's running requests; old entries age out
#: characters of raw settings kept (each is at most MAX_SETTINGS_CHARS): a finished request's entry stays until
#: newer ones push it out, so the table is bounded by size too; a running request pushed out is decoded again
#: at its next step (every step records its batch's settings)
_SETTINGS_MAX_CHARS = 256 * 1024**2
_SETTINGS_CHARS = 0
_HOOKED = False
#: every model replica's slots in this process (SGLang's freed request-pool rows are passed to each)
_REPLICAS: weakref.WeakSet[SGLangSlots] = weakref.WeakSet()


def _record(rid: str, params: dict[str, Any] | None) -> None:
    global _SETTINGS_CHARS
    raw = (params or {}).get(SETTINGS_KEY)
    with _SETTINGS_LOCK:
        old = _SETTINGS.get(rid)
        if old is not None and raw is not None and (old[0] is raw or old[0] == raw):
            _SETTINGS.move_to_end(rid)
            return
        if old is not None:
            del _SETTINGS[rid]
            _SETTINGS_CHARS -= _chars(old[0])
        if raw is None:
            return
        value = read_settings(params, "SGLang")
        assert value is not None  # the entry is there
        _SETTINGS[rid] = (raw, value)
        _SETTINGS_CHARS += _chars(raw)
        while len(_SETTINGS) > _SETTINGS_CAP or (_SETTINGS_CHARS > _SETTINGS_MAX_CHARS and len(_SETTINGS) > 1):
            _, (gone, _) = _SETTINGS.popitem(last=False)
            _SETTINGS_CHARS -= _chars(gone)


def _chars(raw: Any) -> int:
    return len(raw) if isinstance(raw, str) else 0


def settings_for(rid: str | None) -> EngineSettings | Exception | None:
    """The settings recorded for request ``rid`` (None: the request asked for nothing)."""
    if rid is None:
        return None
    with _SETTINGS_LOCK:
        hit = _SETTINGS.get(rid)
    return None if hit is None else hit[1]


def install_hooks() -> None:
    """Install the plugin's hooks on SGLang's classes (once per process; see the module docstring)."""
    global _HOOKED
    if _HOOKED:
        return
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch
    from sglang.srt.model_executor.model_runner import ModelRunner

    original = ForwardBatch.init_new.__func__  # type: ignore[attr-defined]

    def init_new(cls: Any, batch: Any, model_runner: Any, **kwargs: Any) -> Any:
        for req in getattr(batch, "reqs", None) or []:
            sp = getattr(req, "sampling_params", None)
            _record(req.rid, getattr(sp, "custom_params", None))
        return original(cls, batch, model_runner, **kwargs)

    req_init = Req.__init__

    def req_init_salted(self: Any, *args: Any, **kwargs: Any) -> None:
        req_init(self, *args, **kwargs)
        params = getattr(getattr(self, "sampling_params", None), "custom_params", None)
        if params and SETTINGS_KEY in params:  # before the scheduler matches the prompt in the radix cache
            _record(self.rid, params)
            self.cache_salt = ablation_cache_salt(settings_for(self.rid), self.cache_salt)

    free_rows = ReqToTokenPool.free_rows

    def free_rows_released(self: Any, indices: Any) -> None:
        for replica in list(_REPLICAS):
            replica.free(indices)
        free_rows(self, indices)

    forward = ModelRunner.forward

    def forward_with_records(self: Any, forward_batch: Any, *args: Any, **kwargs: Any) -> Any:
        setup = getattr(self.model, "l2reason_setup", None)
        if setup is not None:
            setup(self)
        out = forward(self, forward_batch, *args, **kwargs)
        fill = getattr(self.model, "l2reason_records", None)
        if fill is not None:
            fill(forward_batch, getattr(out, "logits_output", None))
        return out

    init_graphs = ModelRunner.init_cuda_graphs

    def init_graphs_after_setup(self: Any, *args: Any, **kwargs: Any) -> Any:
        setup = getattr(self.model, "l2reason_setup", None)
        if setup is not None:
            setup(self)  # the tables exist before any capture (no allocation inside a graph)
        return init_graphs(self, *args, **kwargs)

    _hook_pruning()
    ForwardBatch.init_new = classmethod(init_new)  # type: ignore[method-assign]
    Req.__init__ = req_init_salted  # type: ignore[method-assign]
    ReqToTokenPool.free_rows = free_rows_released  # type: ignore[method-assign]
    ModelRunner.forward = forward_with_records  # type: ignore[method-assign]
    ModelRunner.init_cuda_graphs = init_graphs_after_setup  # type: ignore[method-assign]
    _decline_eager_passes()
    _HOOKED = True


def _hook_pruning() -> None:
    """Online pruning on the scheduler side (:mod:`l2reason_sglang.prune`): after each processed batch result,
    and after a client's abort."""
    from sglang.srt.managers.scheduler import Scheduler

    from l2reason_sglang import prune

    process = Scheduler.process_batch_result
    abort = Scheduler.abort_request

    def process_batch_result(self: Any, batch: Any, result: Any) -> Any:
        out = process(self, batch, result)
        if prune.GROUPS.members or any(_prunes(req.rid) for req in getattr(batch, "reqs", None) or []):
            prune.after_batch_result(batch, settings_for)
        return out

    def abort_request(self: Any, recv_req: Any) -> Any:
        out = abort(self, recv_req)
        if prune.GROUPS.members:
            prune.after_abort(getattr(recv_req, "rid", None), bool(getattr(recv_req, "abort_all", False)))
        return out

    Scheduler.process_batch_result = process_batch_result  # type: ignore[method-assign]
    Scheduler.abort_request = abort_request  # type: ignore[method-assign]


def _prunes(rid: str | None) -> bool:
    s = settings_for(rid)
    return isinstance(s, EngineSettings) and s.prune is not None


def _decline_eager_passes() -> None:
    """Make SGLang's graph runners decline a pass that holds an eager request (ALRR, ``sae_ablate``)."""
    import importlib

    for module, name in (
        ("sglang.srt.model_executor.runner.decode_cuda_graph_runner", "DecodeCudaGraphRunner"),
        ("sglang.srt.model_executor.runner.prefill_cuda_graph_runner", "PrefillCudaGraphRunner"),
        ("sglang.srt.model_executor.cpu_graph_runner", "CPUGraphRunner"),
    ):
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:  # a runner this build lacks cannot replay anything
            log.debug("l2reason: no %s.%s to hook (%s)", module, name, e)
            continue
        _wrap_can_run(cls)


def _wrap_can_run(cls: type) -> None:
    can_run = cls.can_run_graph  # type: ignore[attr-defined]

    def can_run_graph(self: Any, forward_batch: Any) -> bool:
        declines = getattr(self.model_runner.model, "l2reason_declines_graph", None)
        if declines is not None and declines():
            return False
        return bool(can_run(self, forward_batch))

    cls.can_run_graph = can_run_graph  # type: ignore[attr-defined]


def _capturing() -> bool:
    """Whether this forward is being captured (a CUDA graph, or torch.compile tracing it)."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def setup_slots(model: Any, model_runner: Any) -> SGLangSlots:
    """The replica's :class:`~l2reason_sglang.slots.SGLangSlots` (built on first use, before any capture)."""
    inner = model.model
    slots = getattr(inner, "_l2r_slots", None)
    if slots is None:
        pool = model_runner.req_to_token_pool
        num_slots = int(pool.req_to_token.shape[0])  # slot 0 is SGLang's padding row
        param = next(inner.parameters())
        info = EngineModelInfo(
            "SGLang", num_layers=len(inner.layers), hidden_size=int(inner.config.hidden_size), dtype=param.dtype
        )
        slots = inner._l2r_slots = SGLangSlots(info, num_slots, device=param.device, kinds=graph_kinds())
        _REPLICAS.add(slots)
    return slots


def graph_kinds() -> tuple[str, ...]:
    """The kinds compiled into the captured step: ``$L2REASON_SGLANG_GRAPH_KINDS`` (comma-separated, ``none`` for
    norm capture only), default :data:`~l2reason_sglang.slots.GRAPH_KINDS`. Each kind costs every replayed step;
    a request using a kind left out is served on the eager path (its passes are not replayed)."""
    raw = os.environ.get("L2REASON_SGLANG_GRAPH_KINDS")
    if raw is None:
        return GRAPH_KINDS
    kinds = tuple(k.strip() for k in raw.split(",") if k.strip() and k.strip() != "none")
    bad = sorted(set(kinds) - set(GRAPH_KINDS))
    if bad:
        raise ConfigError(f"L2REASON_SGLANG_GRAPH_KINDS: {bad} cannot run in the graph step; choose from {GRAPH_KINDS}")
    return kinds


def prepare_step(slots: SGLangSlots, forward_batch: Any) -> Step:
    """This pass's :class:`~l2reason_sglang.slots.Step`, from SGLang's ``ForwardBatch`` (before the forward)."""
    rids = list(forward_batch.rids or [])
    mode = forward_batch.forward_mode
    ids = forward_batch.input_ids
    n = int(ids.shape[0]) if ids is not None else 0
    if not rids or mode.is_idle():
        return slots.prepare([], [], [], decode=mode.is_decode(), num_tokens=n)
    settings = [settings_for(r) for r in rids]
    decode = mode.is_decode()
    if any(s is not None for s in settings):
        if mode.is_mixed():
            raise ConfigError(
                "l2reason: mixed chunked prefill is not supported; start SGLang without --enable-mixed-chunk"
            )
        if not decode and not mode.is_extend():
            raise ConfigError(f"l2reason: forward mode {mode} is not supported (speculative decoding?)")
    pool = forward_batch.req_pool_indices_cpu
    pool = forward_batch.req_pool_indices if pool is None else pool
    slot_ids = [int(s) for s in pool[: len(rids)].tolist()]
    lens = None if decode else list(forward_batch.extend_seq_lens_cpu or [])
    return slots.prepare(rids, slot_ids, settings, decode=decode, num_tokens=n, extend_lens=lens)


def _rerun(layer: Any, positions: torch.Tensor, forward_batch: Any, x: torch.Tensor) -> torch.Tensor:
    """Layer ``layer`` applied to ``x [B, d]`` (the decode rows' streams) with the KV cache left as it was."""
    from sglang.srt.layers.layer_boundary.residual import batch as residual_batch
    from sglang.srt.model_executor.forward_context import get_attn_backend

    pool = get_attn_backend().token_to_kv_pool
    attn = layer.self_attn.attn
    local = attn.layer_id - getattr(pool, "start_layer", 0)
    if getattr(pool, "is_quantized_kv_cache", False) or not hasattr(pool, "k_buffer"):
        raise ConfigError("l2reason: recursion needs a plain (unquantized) KV cache pool")
    loc = forward_batch.out_cache_loc
    k_buf, v_buf = pool.k_buffer[local], pool.v_buffer[local]
    k_saved, v_saved = k_buf[loc].clone(), v_buf[loc].clone()
    saved = forward_batch.residual_stream
    try:
        xin = x.clone()  # the fused add+norm may write its input in place
        residual_batch.set_written(xin, forward_batch)
        h = layer(positions, xin, forward_batch)
        out, res = residual_batch.stream_of(forward_batch).export(h)
        return out + res if res is not None else out
    finally:
        forward_batch.residual_stream = saved
        k_buf[loc] = k_saved
        v_buf[loc] = v_saved


def l2_model_forward(
    self: Any,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    forward_batch: Any,
    input_embeds: torch.Tensor | None = None,
    pp_proxy_tensors: Any = None,
) -> Any:
    """The inner model's forward with the l2reason step after every layer (see the module docstring)."""
    from sglang.srt.layers.layer_boundary.residual import batch as residual_batch

    step: Step | None = self._l2r_step  # prepared for this pass (None: a capture, or a warm-up before one)
    self._l2r_step = None
    if _capturing():
        step = None  # a captured graph holds the graph step only
    if (step is not None and step.plain) or self._l2r_slots is None:  # (no slots: nothing was admitted)
        return self._l2r_stock_forward(input_ids, positions, forward_batch, input_embeds, pp_proxy_tensors)
    slots: SGLangSlots = self._l2r_slots
    hidden = self.embed_tokens(input_ids) if input_embeds is None else input_embeds
    residual_batch.start(forward_batch)
    eager_recursion = step is not None and step.decode and step.eager_plan is not None
    for i in range(self.start_layer, self.end_layer):
        layer = self.layers[i]
        hidden = layer(positions, hidden, forward_batch)
        stream = residual_batch.stream_of(forward_batch)
        out, res = stream.export(hidden)  # completes any owed reduction; the pending add stays
        if stream.pending is not None:
            hidden = out
        rerun = None
        if eager_recursion:

            def rerun(xs: torch.Tensor, _layer: Any = layer) -> torch.Tensor:
                return _rerun(_layer, positions, forward_batch, xs)

        slots.after_layer(step, i, out, res, rerun)
    return residual_batch.final_norm(hidden, forward_batch, self.norm, skip_empty=True)


def _no_records(forward_batch: Any, why: str) -> list[dict[str, Any] | None] | None:
    """Error records for the rows with settings of a pass the plugin has no step for (None: no such row)."""
    settings = [settings_for(r) for r in (forward_batch.rids or [])]
    if all(s is None for s in settings):
        return None
    msg = f"l2reason: no record for this token ({why}); please report this"
    return [None if s is None else {"e": msg} for s in settings]


def fill_records(inner: Any, forward_batch: Any, logits_output: Any) -> None:
    """Put this pass's records into ``logits_output.customized_info`` (after the forward, replays included)."""
    step: Step | None = inner._l2r_done
    inner._l2r_done = inner._l2r_step = None  # nothing of this pass is left for a later forward (a capture)
    if logits_output is None or not hasattr(logits_output, "customized_info"):
        return
    if step is None:
        records = _no_records(forward_batch, "the pass was not prepared")
    elif step.rids != list(forward_batch.rids or []):
        records = _no_records(forward_batch, "the pass ran other requests than the ones prepared")
    elif step.plain:
        records = None
    else:
        records = inner._l2r_slots.records(step, getattr(logits_output, "next_token_logits", None))
    if records is None:
        return
    info = dict(logits_output.customized_info or {})  # a new dict: a replay's output shares its capture's
    info[TOKEN_KEY] = records
    logits_output.customized_info = info


def convert_inner_model(inner: torch.nn.Module) -> None:
    """Swap the inner model's class for one whose forward is :func:`l2_model_forward` (weights unchanged)."""
    base = type(inner)
    if getattr(base, "_l2r_converted", False):
        return
    pp = getattr(inner, "pp_group", None)
    if pp is not None and getattr(pp, "world_size", 1) != 1:
        raise ConfigError("l2reason: pipeline parallelism is not supported by the SGLang plugin (use --tp / --dp)")
    cls = type(
        f"L2{base.__name__}",
        (base,),
        {"forward": l2_model_forward, "_l2r_stock_forward": base.forward, "_l2r_converted": True},
    )
    inner.__class__ = cls
    state: Any = inner  # the plugin's per-replica attributes (set here, read by the hooks)
    state._l2r_step = state._l2r_done = state._l2r_slots = None
    install_hooks()


def l2_causal_lm(base: type) -> type:
    """A subclass of SGLang's causal-LM class ``base`` (same name, so SGLang picks it for the same
    checkpoints) whose inner model runs :func:`l2_model_forward`, with the hooks SGLang's model runner calls
    (``prepare_for_forward``) or the plugin's hooks call (``l2reason_setup``, ``l2reason_records``,
    ``l2reason_declines_graph``)."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, *args, **kwargs)  # type: ignore[misc]
        convert_inner_model(self.model)
        log.info("l2reason: %s serves with the l2reason layer loop", base.__name__)

    def l2reason_setup(self: Any, model_runner: Any) -> None:
        setup_slots(self, model_runner)

    def prepare_for_forward(self: Any, forward_batch: Any) -> None:
        inner = self.model
        if inner._l2r_slots is not None:  # else no step: the pass's rows with settings get error records
            inner._l2r_step = inner._l2r_done = prepare_step(inner._l2r_slots, forward_batch)

    def l2reason_records(self: Any, forward_batch: Any, logits_output: Any) -> None:
        fill_records(self.model, forward_batch, logits_output)

    def l2reason_declines_graph(self: Any) -> bool:
        step = self.model._l2r_step
        return step is not None and step.eager

    return type(
        base.__name__,
        (base,),
        {
            "__init__": __init__,
            "prepare_for_forward": prepare_for_forward,
            "l2reason_setup": l2reason_setup,
            "l2reason_records": l2reason_records,
            "l2reason_declines_graph": l2reason_declines_graph,
            "__module__": __name__,
            "__doc__": f"SGLang's {base.__name__}; the inner model's layer loop is l2reason's.",
            "l2reason_plugin": True,
        },
    )
