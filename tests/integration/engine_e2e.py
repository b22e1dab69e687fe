"""What the SGLang and vLLM end-to-end tests share: the log folder, the prompts and starting their servers.

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
