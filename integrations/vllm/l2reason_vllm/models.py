"""Qwen2/Qwen2.5, Qwen3 and Llama with l2reason's layer loop (vLLM's classes, same weights).

Each class subclasses vLLM's causal-LM class and replaces only the inner
model's ``forward``: the same layers in the same order, plus after each the
traced step (:func:`~l2reason.serving.graph.graph_step`) and the eager op
``torch.ops.l2reason.after_layer`` (see :mod:`l2reason_vllm.runtime` and
:mod:`l2reason_vllm.graphs`). Building a model also applies the plugin's
compilation settings (:func:`~l2reason_vllm.graphs.configure_compilation`) and
logs them in its start-up line.

vLLM compiles the inner model's ``forward`` when the inner model is *built*
(its compile wrapper binds the method then), so patching the method or the
class of a built model would be skipped in the default compiled mode. The
plugin's inner class is therefore the one that gets built: for Qwen2/Qwen3 the
parent constructor looks its inner class up by module-global name, which is
pointed at the subclass for the duration of that constructor (under a lock);
Llama offers ``_init_model`` for this.

The vLLM architecture names are ``L2<name>``, selected with
``hf_overrides={"architectures": ["L2Qwen2ForCausalLM"]}`` (the launcher does
it), so a server without the override serves vLLM's own class.
"""

from __future__ import annotations

import logging
import threading
from itertools import islice
from typing import Any

import torch
from vllm.distributed import get_pp_group
from vllm.model_executor.models import llama, qwen2, qwen3

from l2reason.errors import ConfigError
from l2reason.serving.graph import graph_step
from l2reason_vllm import runtime  # registers torch.ops.l2reason.after_layer
from l2reason_vllm.graphs import configure_compilation, read_config

log = logging.getLogger("vllm.l2reason_vllm")  # a child of vLLM's logger: its handler prints it
_BUILD_LOCK = threading.Lock()


def l2_model_forward(
    self: Any,
    input_ids: torch.Tensor | None,
    positions: torch.Tensor,
    intermediate_tensors: Any = None,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """The inner model's forward with l2reason's step after each decoder layer.

    Traceable: the traced path (:func:`~l2reason.serving.graph.graph_step` on the worker's tables) is plain
    tensor code the compiler records; the eager path's op is opaque to it. Which of the two are in the
    forward is fixed when the worker is set up (before the first, traced, forward), as Python-level choices.
    """
    state = runtime.STATE
    tables, eager = state.tables, state.config.eager
    buffers = runtime.table_buffers(self) if tables is not None else None  # from the module: runtime.register_tables
    hidden = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
    residual = None
    for idx, layer in enumerate(islice(self.layers, self.start_layer, self.end_layer), start=self.start_layer):
        hidden, residual = layer(positions, hidden, residual)
        if eager:  # the eager path's interventions first: the traced step records every request's norms after them
            torch.ops.l2reason.after_layer(hidden, residual, positions, idx)
        if tables is not None:
            if not torch.compiler.is_compiling():  # counts Python runs; a trace records no such side effect
                state.counts["graph_step_python"] += 1
            hidden, residual = graph_step(tables, idx, hidden, residual, buffers=buffers)
    hidden, _ = self.norm(hidden, residual)
    return hidden


def _inner(base: type) -> type:
    return type(f"L2{base.__name__}", (base,), {"forward": l2_model_forward, "__module__": __name__})


L2Qwen2Model = _inner(qwen2.Qwen2Model)
L2Qwen3Model = _inner(qwen3.Qwen3Model)
L2LlamaModel = _inner(llama.LlamaModel)


def _check(vllm_config: Any) -> None:
    if get_pp_group().world_size != 1:
        raise ConfigError("l2reason: pipeline parallelism is not supported by the vLLM plugin (use tensor parallel)")
    if getattr(vllm_config, "speculative_config", None) is not None:
        raise ConfigError("l2reason: speculative decoding is not supported by the vLLM plugin")
    kv = getattr(vllm_config, "kv_transfer_config", None)
    if kv is None or "l2reason" not in str(getattr(kv, "kv_connector_module_path", "") or ""):
        raise ConfigError(
            "l2reason: the vLLM plugin needs its KV connector to return per-token data; start vLLM through "
            "`python -m l2reason_vllm.launch` (or pass kv_transfer_config=l2reason_vllm.launch.KV_TRANSFER_CONFIG)"
        )


class _L2Mixin:
    """What the l2reason classes add to vLLM's causal-LM classes."""

    def _l2_setup(self, vllm_config: Any) -> None:
        self._l2_config = vllm_config
        self._l2_ready = False
        self._l2_plugin = read_config(getattr(vllm_config, "additional_config", None))
        how = configure_compilation(vllm_config.compilation_config, self._l2_plugin)
        mode = getattr(getattr(vllm_config.compilation_config, "mode", None), "name", "?")
        log.info(
            "l2reason: %s serves with the l2reason layer loop (compilation %s); %s", type(self).__name__, mode, how
        )

    def _l2_runtime(self) -> None:
        if self._l2_ready:
            return
        cfg = self._l2_config
        inner = self.model  # type: ignore[attr-defined]
        hf = cfg.model_config.hf_config.get_text_config()
        runtime.STATE.setup(
            inner,
            num_layers=int(hf.num_hidden_layers),
            hidden_size=int(hf.hidden_size),
            max_seqs=int(cfg.scheduler_config.max_num_seqs),
            block_size=int(cfg.cache_config.block_size),
            max_tokens=int(cfg.scheduler_config.max_num_batched_tokens),
            config=self._l2_plugin,
        )
        self._l2_ready = True
        runtime.STATE.rebuild()  # a step the connector bound before the state existed (an eager server's first)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._l2_runtime()
        return super().forward(*args, **kwargs)  # type: ignore[misc]

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = super().compute_logits(hidden_states)  # type: ignore[misc]
        if logits is not None:
            runtime.STATE.add_self_certainty(logits)
        return logits


def _with_inner(module: Any, name: str, cls: type, build: Any) -> None:
    """Run ``build()`` while ``module.<name>`` is ``cls`` (the parent constructor builds its inner model by name)."""
    with _BUILD_LOCK:
        saved = getattr(module, name)
        setattr(module, name, cls)
        try:
            build()
        finally:
            setattr(module, name, saved)


def _qwen(module: Any, parent: type, inner: type) -> type:
    """``L2<parent>``: vLLM's Qwen causal-LM class ``parent`` whose constructor builds ``inner`` (the parent looks
    its inner class up by the module-global name ``inner``'s base has, see the module docstring)."""

    def __init__(self: Any, *, vllm_config: Any, prefix: str = "") -> None:
        _check(vllm_config)
        name = inner.__mro__[1].__name__  # Qwen2Model / Qwen3Model
        _with_inner(module, name, inner, lambda: parent.__init__(self, vllm_config=vllm_config, prefix=prefix))  # type: ignore[misc]
        assert isinstance(self.model, inner)
        self._l2_setup(vllm_config)

    doc = f"vLLM's {parent.__name__}; the inner model's layer loop is l2reason's."
    return type(
        f"L2{parent.__name__}", (_L2Mixin, parent), {"__init__": __init__, "__doc__": doc, "__module__": __name__}
    )


#: vLLM's Qwen2ForCausalLM (Qwen2, Qwen2.5) and Qwen3ForCausalLM with l2reason's layer loop
L2Qwen2ForCausalLM = _qwen(qwen2, qwen2.Qwen2ForCausalLM, L2Qwen2Model)
L2Qwen3ForCausalLM = _qwen(qwen3, qwen3.Qwen3ForCausalLM, L2Qwen3Model)


class L2LlamaForCausalLM(_L2Mixin, llama.LlamaForCausalLM):
    """vLLM's LlamaForCausalLM; the inner model's layer loop is l2reason's."""

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        _check(vllm_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        assert isinstance(self.model, L2LlamaModel)
        self._l2_setup(vllm_config)

    def _init_model(self, vllm_config: Any, prefix: str = "", layer_type: Any = llama.LlamaDecoderLayer) -> Any:
        return L2LlamaModel(vllm_config=vllm_config, prefix=prefix, layer_type=layer_type)


#: vLLM architecture name -> class (registered by :func:`l2reason_vllm.register`)
MODELS = {cls.__name__: cls for cls in (L2Qwen2ForCausalLM, L2Qwen3ForCausalLM, L2LlamaForCausalLM)}
