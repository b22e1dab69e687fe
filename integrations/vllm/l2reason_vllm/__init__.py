"""l2reason's model plugin for vLLM 0.32 (server side; installs into vLLM's environment).

vLLM loads it in every one of its processes through the ``vllm.general_plugins``
entry point (:func:`register`). It registers model classes ``L2Qwen2ForCausalLM``,
``L2Qwen3ForCausalLM`` and ``L2LlamaForCausalLM`` (vLLM's classes with l2reason's
layer loop, same weights) and provides the KV connector that carries settings
in and per-token records out. A server uses them when started with
``hf_overrides={"architectures": ["L2..."]}`` and the connector in
``kv_transfer_config``: ``python -m l2reason_vllm.launch`` (or ``l2reason serve
--engine vllm``) sets both.
"""

__version__ = "0.1.0"

#: HF architecture name -> the plugin's vLLM architecture name
ARCHITECTURES = {
    "Qwen2ForCausalLM": "L2Qwen2ForCausalLM",
    "Qwen3ForCausalLM": "L2Qwen3ForCausalLM",
    "LlamaForCausalLM": "L2LlamaForCausalLM",
}


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register the model classes (lazily imported)."""
    from vllm import ModelRegistry

    for arch in ARCHITECTURES.values():
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, f"l2reason_vllm.models:{arch}")
