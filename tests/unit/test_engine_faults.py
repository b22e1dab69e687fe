"""An evaluation against an engine server that dies mid-run, comes back, or comes back with another model.

The server is ``test_engine_client.FakeServer`` (a real HTTP server on a real port, speaking each engine's wire
format as the l2reason plugin does); the client and the harness are the library's own, nothing mocked. The
real-engine version (vLLM killed with SIGKILL under ``l2reason eval``) is
``tests/integration/test_engine_load_faults.py``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_config
from test_engine_client import CLOSE, ENGINES, FakeServer, Tok, js

from l2reason.backends.engine_server import free_port
from l2reason.errors import BackendError, ConfigError
from l2reason.eval.harness import pass_path, read_jsonl, run_eval

LIMIT, DIES_AT = 5, 3  # the server dies while generating item 3 (items 0-2 are finished)


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> Any:
    return ENGINES[request.param]


def model_folder(path: Path) -> str:
    """A model folder as the clients read it: a config (4 layers x 8) and nothing else (the tokenizer is ``Tok``)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps(dict(num_hidden_layers=4, hidden_size=8, max_position_embeddings=64)))
    return str(path)


def start(engine: Any, model_dir: str, port: int, gen: Any = None) -> FakeServer:
    return FakeServer({engine.info: js(engine.info_ok(model_dir)), engine.gen: gen or engine.gen_ok()}, port=port)


def lines(run_dir: Path) -> list[str]:
    return pass_path(run_dir, "greedy").read_text().splitlines()


def test_a_server_dying_mid_eval_keeps_every_finished_item_and_resume_completes(engine, tmp_path):
    model, port, run_dir = model_folder(tmp_path / "model"), free_port(), tmp_path / "run"
    good, calls = engine.gen_ok(), [0]
    holder: list[FakeServer] = []
    stopping: list[threading.Thread] = []

    def dying(body: Any) -> Any:  # the probe, then one call per item (batch_items=1, n=0): dies on item DIES_AT
        calls[0] += 1
        if calls[0] == 2 + DIES_AT:
            stopping.append(threading.Thread(target=holder[0].stop))
            stopping[0].start()
            return CLOSE
        return good(body)

    holder.append(start(engine, model, port, dying))
    be = engine.cls(f"http://127.0.0.1:{port}", tokenizer=Tok(), timeout=5.0, retries=2, backoff=0.05)
    cfg = run_config(be, "chain_sum", limit=LIMIT, n=0, gen_methods=["greedy"], batch_items=1, max_new_tokens=4)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"broke during .*may have crashed or restarted"):
        run_eval(be, cfg, run_dir, show_progress=False)
    assert time.monotonic() - t0 < 5.0  # well within the client's timeout
    kept = lines(run_dir)
    assert len(kept) == DIES_AT and len(read_jsonl(pass_path(run_dir, "greedy"))[0]) == DIES_AT

    # the server is gone: a new call is a clear error within the timeout too (the retries find no server);
    # wait for the listener to close first, else a connection it still accepts is reset instead of refused
    stopping[0].join(timeout=10)
    with pytest.raises(BackendError, match=r"cannot reach the \w+ server at http://127\.0\.0\.1:\d+"):
        engine.cls(f"http://127.0.0.1:{port}", tokenizer=Tok(), timeout=5.0, retries=2, backoff=0.05)

    # restarted (same address, same model): the resume generates only what is missing, each item once
    back = start(engine, model, port)
    try:
        be2 = engine.cls(f"http://127.0.0.1:{port}", tokenizer=Tok())
        run = run_eval(be2, cfg, run_dir, show_progress=False)
    finally:
        back.stop()
    after = lines(run_dir)
    assert after[:DIES_AT] == kept  # finished items untouched
    ids = [json.loads(x)["item_id"] for x in after]
    assert len(ids) == LIMIT == len(set(ids)) == len(run.gens["greedy"])
    assert sum(1 for _, p, _, _ in back.seen if p == engine.gen) == 1 + LIMIT - DIES_AT  # the probe + the rest


def test_a_server_restarted_with_another_model_is_refused_on_resume(engine, tmp_path):
    first, other = model_folder(tmp_path / "model-a"), model_folder(tmp_path / "model-b")
    port, run_dir = free_port(), tmp_path / "run"
    srv = start(engine, first, port)
    try:
        be = engine.cls(f"http://127.0.0.1:{port}", tokenizer=Tok())
        cfg = run_config(be, "chain_sum", limit=2, n=0, gen_methods=["greedy"], batch_items=1, max_new_tokens=4)
        cfg = cfg.model_copy(update={"model": f"{engine.cls.scheme}://127.0.0.1:{port}"})
        run_eval(be, cfg, run_dir, show_progress=False)
    finally:
        srv.stop()
    before = lines(run_dir)
    srv = start(engine, other, port)
    try:
        be = engine.cls(f"http://127.0.0.1:{port}", tokenizer=Tok())
        cfg = cfg.model_copy(update={"model_id": be.model_id, "limit": 3})  # as the CLI builds it from the backend
        with pytest.raises(ConfigError, match=r"model_id: stored '.*model-a', now '.*model-b'.*start it with that"):
            run_eval(be, cfg, run_dir, show_progress=False)
        assert [p for _, p, _, _ in srv.seen].count(engine.gen) == 1  # the probe only: nothing generated
    finally:
        srv.stop()
    assert lines(run_dir) == before
