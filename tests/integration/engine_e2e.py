"""What the SGLang and vLLM end-to-end tests share: the log folder, the prompts, an SAE, starting their servers.

Not a test module (pytest collects ``test_*.py`` only); the e2e modules import
it by name, from their own folder.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: where the servers' logs are kept after the run
LOGS = Path("out/test-logs")
PROMPTS = ["def fibonacci(n):", "The capital of France is"]
Q = "Tom has 3 boxes of 18 marbles and gives 14 away. How many are left? Think step by step."

#: every intervention, set so that it changes nothing (the tokens must equal the stock engine's)
NOOPS = [
    {"kind": "alrr", "K": 0},
    {"kind": "erss", "beta": 0.0, "S": 1, "p": 1.0, "C": 0, "c_min": -1.0, "threshold": {"warmup": 1}},
    {"kind": "static_steer", "vectors": {12: [1.0] * 896}, "alpha": 0.0},
    {"kind": "suppress", "target": "random", "rate": 0.0},
]


#: the SAE features the ablation tests remove (every other one of :func:`random_topk_sae`'s 64)
ABLATED = list(range(0, 64, 2))


def random_topk_sae(hidden_size: int, seed: int = 0) -> Any:
    """A TopK SAE (k=16) of 64 random unit directions over ``hidden_size``-dim states (encoder = decoder^T)."""
    import torch

    from l2reason.techniques.sae_ablate import SAEWeights

    g = torch.Generator().manual_seed(seed)
    d_dec = torch.randn(64, hidden_size, generator=g)
    d_dec = d_dec / d_dec.norm(dim=-1, keepdim=True)
    zeros = torch.zeros(hidden_size)
    return SAEWeights(W_enc=d_dec.T.clone(), b_enc=torch.zeros(64), b_dec=zeros, W_dec=d_dec, activation="topk", k=16)


def bad_sae_specs(spec: dict[str, Any], sae_dir: Path, outside: Path) -> list[tuple[dict[str, Any], str]]:
    """SAE specs the plugin must refuse as the request's error, with the message each gets (a regex).

    Writes an 8-dim SAE into ``sae_dir`` and a link in it that leads to a file outside (``outside``).
    """
    import os

    import torch

    from l2reason.techniques.sae_ablate import SAEWeights

    small = SAEWeights(W_enc=torch.eye(8), b_enc=torch.zeros(8), b_dec=torch.zeros(8), W_dec=torch.eye(8))
    small.save(sae_dir / "small.safetensors")
    random_topk_sae(896).save(outside)
    os.symlink(outside, sae_dir / "leads-out.safetensors")
    return [
        ({**spec, "sae": "missing.safetensors"}, "no SAE named 'missing.safetensors'"),
        ({**spec, "sae": "leads-out.safetensors"}, "no SAE named 'leads-out.safetensors'"),  # reads as missing
        ({**spec, "sae": "small.safetensors", "features": [1]}, "reads 8-dim states"),
        ({**spec, "features": [64]}, r"feature indices must be in \[0, 64\)"),
        ({**spec, "layer": 24}, "layer 24 does not exist"),
    ]


@contextlib.contextmanager
def serving(*servers: Any, timeout: float = 900.0) -> Iterator[tuple[Any, ...]]:
    """Start ``servers`` (:class:`~l2reason.backends.engine_server.EngineServer`\\ s) at the same time, wait until
    each is ready (start-up is mostly loading and compiling), yield them, and stop them all afterwards.

    If one does not start, all are stopped and its error (with that server's log tail) is raised.
    """
    errors: list[BaseException] = []

    def start(srv: Any) -> None:
        try:
            srv.start(timeout=timeout)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start, args=(srv,)) for srv in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
        yield servers
    finally:
        for srv in servers:
            srv.stop()
