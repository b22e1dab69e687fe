"""The vLLM runtime: a client backend for a vLLM server with the l2reason plugin, and its launcher.

``VLLMBackend`` implements the same protocol as the embedded ``HFBackend``;
``l2reason serve --engine vllm`` (:mod:`l2reason.backends.vllm.server`) starts a
server, and ``VLLMBackend.launch(model)`` (the ``vllm:<model>`` spec) starts
one it owns. Neither imports vLLM: the server runs in vLLM's own environment.
"""

from l2reason.backends.vllm.client import VLLMBackend, parse_vllm_url

__all__ = ["VLLMBackend", "parse_vllm_url"]
