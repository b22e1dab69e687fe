"""Finding the decoder layers of a transformers model, and re-running one safely."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from l2reason.errors import ConfigError

# Attribute paths of the decoder-layer list in the model families we know
# (Llama, Qwen2/3, Mistral, Gemma 1-3 text, Phi-3, SmolLM: ``model.layers``;
# GPT-2 / GPT-J style: ``transformer.h``; GPT-NeoX: ``gpt_neox.layers``).
KNOWN_LAYER_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "model.decoder.layers",
    "transformer.h",
    "gpt_neox.layers",
)


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def find_decoder_layers(model: nn.Module, path: str | None = None) -> tuple[nn.ModuleList, str]:
    """The model's list of decoder layers and the attribute path it was found at.

    Args:
        model: a transformers causal LM.
        path: override, e.g. ``"model.layers"``; tried alone when given.

    Raises:
        ConfigError: no known path holds a ``ModuleList``; the message lists
            the paths tried and says how to pass ``layers_path=``.
    """
    candidates = (path,) if path else KNOWN_LAYER_PATHS
    for p in candidates:
        try:
            obj = _get_path(model, p)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj, p
    tried = ", ".join(candidates)
    raise ConfigError(
        f"could not find the decoder layers of {type(model).__name__} (tried {tried}). "
        "Pass the attribute path of its nn.ModuleList of decoder layers, "
        "e.g. HFBackend(model, layers_path='model.layers')."
    )


def layer_output_tensor(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a decoder layer's output.

    transformers 5.x layers return a tensor; 4.x layers return a tuple whose
    first element is the hidden states. Both are handled here and only here.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"unexpected decoder-layer output of type {type(output).__name__}")


def replace_layer_output(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden-state tensor swapped for ``hidden`` (same structure)."""
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *tuple(output[1:]))


def _cache_from_kwargs(kwargs: dict[str, Any]) -> Any:
    for key in ("cache", "past_key_values", "past_key_value"):
        if kwargs.get(key) is not None:
            return kwargs[key]
    return None


def make_rerun(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function that re-runs decoder layer ``module`` on a new input, KV-safely.

    The normal pass has already appended this step's keys/values to the cache.
    For the extra pass we temporarily hide those last ``q`` positions, let the
    layer attend to the earlier positions plus its *new* keys/values, and then
    restore the cache exactly: ``DynamicLayer.update`` concatenates into a new
    tensor, so the saved tensors are never modified. Later tokens therefore see
    pass-0 keys/values only, as ALRR requires (``docs/techniques.md``, "ALRR").
    """
    cache = _cache_from_kwargs(kwargs)
    attn = getattr(module, "self_attn", None)
    layer_idx = getattr(attn, "layer_idx", None)

    def rerun(x: torch.Tensor) -> torch.Tensor:
        q = x.shape[-2]
        if cache is None or layer_idx is None:
            return layer_output_tensor(module.forward(x, *args[1:], **kwargs))
        slot = cache.layers[layer_idx]
        keys, values = slot.keys, slot.values
        slot.keys, slot.values = keys[..., :-q, :], values[..., :-q, :]
        try:
            return layer_output_tensor(module.forward(x, *args[1:], **kwargs))
        finally:
            slot.keys, slot.values = keys, values

    return rerun
