"""SGLang glue for the l2reason controllers: settings in, the layer loop, norms out.

Everything ℓ2 is :mod:`l2reason.serving` (per-slot state, the per-layer step)
and :mod:`l2reason.techniques` (the controllers the embedded backend runs
too); this file holds only what is SGLang's (0.5.23):

- **Settings in.** A request's settings travel as one JSON string in
  ``sampling_params["custom_params"]["l2reason"]``. Attributes set on a
  ``ForwardBatch`` do not reach the model (the runner rebuilds it keeping
  declared fields only), so :func:`install_settings_hook` wraps
  ``ForwardBatch.init_new``, which sees the scheduler's requests, and records
  each request's decoded settings by request id; the model looks its rows up
  through ``forward_batch.rids``. Entries age out of a bounded LRU table.
- **The layer loop** (:func:`l2_model_forward`) replaces the inner model's
  ``forward``: the same layers in the same order; after a layer the plugin
  needs, it reads the residual stream of each request's newest position.
  SGLang carries the stream as a pending pair (layer output ``o`` + residual
  ``r``; the next layer's fused add+norm forms ``o + r``), so the stream is
  ``o + r`` and a changed row is written back as ``r ← x'``, ``o ← 0`` (the
  next add gives exactly ``x'``; other rows are untouched, bit for bit).
  With no request asking for anything, the stock forward runs unchanged.
- **Recursion without touching the KV cache.** A re-run of layer ``l`` writes
  this step's keys/values again; the plugin saves the rows' pass-0 entries
  first and puts them back after, so later tokens see pass-0 keys/values
  only (and the re-run attends to its own new ones, as in the embedded
  backend).
- **SAE ablation** (``sae_ablate``) is not a controller: it changes every
  position of its request, prompt included. Its tokens are the request's
  segment of an extend pass (the uncached prompt tokens) and its row of a
  decode pass; which SAE file (by name, from the ``--sae-dir`` folder only),
  the checks and the grouping are :mod:`l2reason.serving.ablation`'s.
  Because the ablated prompt's keys/values differ from a plain run's, the
  plugin wraps ``Req.__init__`` and gives such a request a radix-cache
  namespace of its own (``req.cache_salt``, extended with a hash of its
  ablations) before the scheduler matches its prompt, whatever the client
  sent: it never reuses a plain request's cached prompt and never leaves its
  own for plain requests.
- **Norms out.** The causal-LM wrapper sets
  ``LogitsProcessorOutput.customized_info["l2r"]`` to one record per request
  row; SGLang appends it to the request and returns it as
  ``meta_info["l2r"]``, one entry per completion token. Prefill records the
  request's last prompt position, decode each row's new token.

Not supported (the launcher refuses them): pipeline parallelism, DP
attention, speculative decoding, mixed chunked prefill. CUDA graphs: this
loop is eager Python (it runs under ``--disable-cuda-graph``; the controllers
themselves are fixed-shape tensor code, see ``docs/sglang.md``).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

import torch

from l2reason.errors import ConfigError
from l2reason.serving.ablation import AblationRows, SAEAblations, SAEStore, ablation_cache_salt, apply_ablations
from l2reason.serving.capabilities import read_settings
from l2reason.serving.info import EngineModelInfo
from l2reason.serving.settings import SETTINGS_KEY, TOKEN_KEY, EngineSettings
from l2reason.serving.slots import SlotRuntime, StepPlan
from l2reason.signal.certainty import self_certainty

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


def install_settings_hook() -> None:
    """Wrap ``ForwardBatch.init_new`` so each request's settings are recorded by request id, and ``Req.__init__``
    so a request with SAE ablations gets a radix-cache namespace of its own (once per process)."""
    global _HOOKED
    if _HOOKED:
        return
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch

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

    ForwardBatch.init_new = classmethod(init_new)  # type: ignore[method-assign]
    Req.__init__ = req_init_salted  # type: ignore[method-assign]
    _HOOKED = True


def _runtime(model: Any, forward_batch: Any) -> SlotRuntime:
    rt = getattr(model, "_l2r_runtime", None)
    if rt is None:
        from sglang.srt.model_executor.forward_context import get_attn_backend

        pool = get_attn_backend().req_to_token_pool
        num_slots = int(pool.req_to_token.shape[0])  # slot 0 is SGLang's padding row
        info = EngineModelInfo(
            "SGLang",
            num_layers=len(model.layers),
            hidden_size=int(model.config.hidden_size),
            dtype=next(model.parameters()).dtype,
        )
        device = forward_batch.input_ids.device
        rt = SlotRuntime(info, num_slots=num_slots, device=device)
        model._l2r_runtime = rt
        model._l2r_ablations = SAEAblations(SAEStore.from_env(device), info)
        log.info("l2reason: per-slot runtime for %d slots, %d layers", num_slots, info.num_layers)
    return rt


def _plan(model: Any, forward_batch: Any) -> tuple[StepPlan, torch.Tensor, dict[int, AblationRows]] | None:
    """This pass's plan, each request row's newest token position, and the SAE ablations (layer -> rows);
    None when no row asked for anything."""
    rids = forward_batch.rids
    mode = forward_batch.forward_mode
    if not rids or mode.is_idle():
        return None
    settings = [settings_for(r) for r in rids]
    if all(s is None for s in settings):
        return None
    if mode.is_mixed():
        raise ConfigError("l2reason: mixed chunked prefill is not supported; start SGLang without --enable-mixed-chunk")
    decode = mode.is_decode()
    if not decode and not mode.is_extend():
        raise ConfigError(f"l2reason: forward mode {mode} is not supported (speculative decoding?)")
    slots = forward_batch.req_pool_indices[: len(rids)].tolist()
    device = forward_batch.input_ids.device
    rows = torch.arange(len(rids))
    if decode:
        last, owner = rows.to(device), rows  # one token per request
    else:  # the requests' new tokens, one segment each, in order
        lens = torch.as_tensor(forward_batch.extend_seq_lens_cpu, dtype=torch.long)
        last, owner = (lens.cumsum(0) - 1).to(device), torch.repeat_interleave(rows, lens)
    rt = _runtime(model, forward_batch)
    checked, bad = model._l2r_ablations.for_rows(list(rids), settings)
    for i, e in bad.items():
        settings[i] = e
    ablate = SAEAblations.plan(checked, owner)
    return rt.plan(slots, list(rids), settings, decode=decode), last, ablate


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
    """The inner model's forward with the l2reason step after each layer it needs (see the module docstring)."""
    from sglang.srt.layers.layer_boundary.residual import batch as residual_batch

    planned = _plan(self, forward_batch)
    self._l2r_plan = planned[0] if planned is not None else None
    if planned is None:
        return self._l2r_stock_forward(input_ids, positions, forward_batch, input_embeds, pp_proxy_tensors)
    plan, last, ablate = planned
    rt: SlotRuntime = self._l2r_runtime
    touched = plan.touched_layers | set(ablate)
    hidden = self.embed_tokens(input_ids) if input_embeds is None else input_embeds
    residual_batch.start(forward_batch)
    for i in range(self.start_layer, self.end_layer):
        layer = self.layers[i]
        hidden = layer(positions, hidden, forward_batch)
        if i not in touched:
            continue
        stream = residual_batch.stream_of(forward_batch)
        out, res = stream.export(hidden)  # completes any owed reduction; the pending add stays
        if stream.pending is not None:
            hidden = out
        apply_ablations(ablate.get(i, []), out, res)  # every token of the ablating requests, in place
        if i not in plan.touched_layers:
            continue
        x = out[last] + res[last] if res is not None else out[last]  # [B, d] newest positions
        rerun = None
        if plan.decode:

            def rerun(xs: torch.Tensor, _layer: Any = layer) -> torch.Tensor:
                return _rerun(_layer, positions, forward_batch, xs)

        new = rt.step_layer(plan, i, x, mlp_out=out[last] if res is not None else None, rerun=rerun)
        if new is not x:
            if res is not None:
                res[last] = new.to(res.dtype)
                out[last] = 0
            else:  # a written stream: `hidden` is the stream itself
                hidden[last] = new.to(hidden.dtype)
    return residual_batch.final_norm(hidden, forward_batch, self.norm, skip_empty=True)


def attach_records(model: Any, output: Any) -> Any:
    """Put this pass's per-row records into the logits output's ``customized_info``."""
    plan = getattr(model, "_l2r_plan", None)
    if plan is None or output is None or not hasattr(output, "customized_info"):
        return output
    info = dict(output.customized_info or {})
    records = model._l2r_runtime.records(plan)
    logits = getattr(output, "next_token_logits", None)
    want = [i for i, s in enumerate(plan.settings) if s is not None and s.sc]
    if want and logits is not None and logits.shape[0] == len(records):
        for i, v in zip(want, self_certainty(logits[want]).tolist(), strict=True):
            records[i] = {**(records[i] or {}), "sc": v}
    elif want:  # asked for and not computable: say so, never leave it out
        for i in want:
            records[i] = {**(records[i] or {}), "e": "l2reason: no logits row for self-certainty"}
    info[TOKEN_KEY] = records
    output.customized_info = info
    model._l2r_plan = None
    return output


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
    inner._l2r_plan = None
    install_settings_hook()


def l2_causal_lm(base: type) -> type:
    """A subclass of SGLang's causal-LM class ``base`` (same name, so SGLang picks it for the same
    checkpoints) whose inner model runs :func:`l2_model_forward` and whose output carries the records."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, *args, **kwargs)
        convert_inner_model(self.model)
        log.info("l2reason: %s serves with the l2reason layer loop", base.__name__)

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        return attach_records(self.model, base.forward(self, *args, **kwargs))

    return type(
        base.__name__,
        (base,),
        {
            "__init__": __init__,
            "forward": forward,
            "__module__": __name__,
            "__doc__": f"SGLang's {base.__name__}; the inner model's layer loop is l2reason's.",
            "l2reason_plugin": True,
        },
    )
