"""l2reason's model plugin for SGLang 0.5.23 (server side; installs into SGLang's environment).

Start a server with it through ``python -m l2reason_sglang.launch`` (or
``l2reason serve``), which sets ``SGLANG_EXTERNAL_MODEL_PACKAGE=l2reason_sglang.models``
so SGLang builds these classes instead of its own for Qwen2/Qwen2.5, Qwen3
and Llama checkpoints. The classes subclass SGLang's and replace only the
inner model's decoder-layer loop; weights load unchanged.
"""

__version__ = "0.1.0"

#: the model classes the plugin provides (SGLang architecture names)
ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM")
