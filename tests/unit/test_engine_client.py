"""The engine clients' shared base (``l2reason.backends.engine_client``) against a real HTTP server.

The server is Python's own ``ThreadingHTTPServer`` in a thread, on a real port, speaking each engine's wire
format the way the l2reason plugin does (the records, the probe's ``caps``), or answering what a broken or
foreign server would: garbage, JSON of the wrong shape, HTTP errors, a dropped connection, nothing in time.
Nothing in the client is mocked; each case asserts the error's message.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from l2reason.backends.base import GenerationRequest, NormSpec, SamplingParams
from l2reason.backends.engine_client import EngineClient, parse_server_url
from l2reason.backends.engine_server import free_port
from l2reason.backends.sglang import SGLangBackend, parse_url
from l2reason.backends.shared import check_spec, get_backend, make_backend
from l2reason.backends.vllm import VLLMBackend, parse_vllm_url
from l2reason.errors import BackendError, CapabilityError, ConfigError
from l2reason.serving.capabilities import caps
from l2reason.serving.settings import EngineSettings

CAPS = {"interventions": ["alrr", "suppress"], "plugin": "0.0-test"}

# ---- a real HTTP server with scripted answers -----------------------------------------------------------------
CLOSE = "close"  # drop the connection without answering


@dataclass(frozen=True)
class Hang:
    """Answer ``{}`` after ``seconds`` (or when the test ends)."""

    seconds: float


def js(obj: Any, status: int = 200) -> tuple[int, bytes]:
    return status, json.dumps(obj).encode()


class FakeServer:
    """A real HTTP/1.1 server (keep-alive) in a thread: ``routes[path]`` is an answer or a function of the body."""

    def __init__(self, routes: dict[str, Any], port: int = 0) -> None:
        self.routes = dict(routes)
        self.seen: list[tuple[str, str, Any, int]] = []  # (method, path, JSON body, client port)
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                fake.seen.append((self.command, self.path, body, self.client_address[1]))
                action = fake.routes.get(self.path, (404, b"no such route"))
                fake.act(self, action(body) if callable(action) else action)

            do_GET = do_POST = serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def act(self, handler: BaseHTTPRequestHandler, action: Any) -> None:
        if action == CLOSE:
            handler.close_connection = True
            return
        if isinstance(action, Hang):
            self.release.wait(action.seconds)
            action = js({})
        status, body = action
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:  # the client is gone
            pass

    def paths(self) -> list[str]:
        return [p for _, p, _, _ in self.seen]

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


# ---- what the l2reason plugin answers, in each engine's format --------------------------------------------------
def plugin_records(settings: EngineSettings | None, T: int, caps: Any) -> list[Any] | None:
    """One record per token: norms ``layer + t`` of the layers asked; the probe's first record carries ``caps``."""
    if settings is None:
        return None
    recs: list[Any] = []
    for t in range(T):
        rec: dict[str, Any] = {"n": [float(layer + t) for layer in settings.layers]}
        if settings.sc:
            rec["sc"] = 0.25
        if settings.probe and t == 0 and caps is not None:
            rec["caps"] = caps
        recs.append(rec)
    if settings.interventions:
        recs[-1]["r"] = {s.kind: {"steps": T} for s in settings.interventions}
    return recs


def sglang_generate(caps: Any = CAPS) -> Callable[[Any], tuple[int, bytes]]:
    def answer(body: Any) -> tuple[int, bytes]:
        outs = []
        for ids, sp in zip(body["input_ids"], body["sampling_params"], strict=True):
            T = sp["max_new_tokens"]
            recs = plugin_records(EngineSettings.decode(sp.get("custom_params")), T, caps)
            meta = {"finish_reason": {"type": "length"}, "prompt_tokens": len(ids)}
            if recs is not None:
                meta["l2r"] = recs
            outs.append({"text": "abcdefgh"[:T], "output_ids": list(range(T)), "meta_info": meta})
        return js(outs)

    return answer


def vllm_complete(caps: Any = CAPS) -> Callable[[Any], tuple[int, bytes]]:
    def answer(body: Any) -> tuple[int, bytes]:
        T = body["max_tokens"]
        recs = plugin_records(EngineSettings.decode(body.get("vllm_xargs")), T, caps)
        choice = {"text": "abcdefgh"[:T], "token_ids": list(range(T)), "finish_reason": "length"}
        return js({"choices": [choice], "kv_transfer_params": {"l2r": recs}, "usage": {"prompt_tokens": 3}})

    return answer


@dataclass
class Engine:
    cls: type[EngineClient]
    info: str  # the route that names the model
    gen: str  # the route that generates
    info_ok: Callable[[str], Any]
    gen_ok: Callable[..., Callable[[Any], tuple[int, bytes]]]


ENGINES = {
    "sglang": Engine(
        SGLangBackend,
        "/model_info",
        "/generate",
        lambda d: {"model_path": d, "context_length": 64},
        sglang_generate,
    ),
    "vllm": Engine(
        VLLMBackend,
        "/v1/models",
        "/v1/completions",
        lambda d: {"data": [{"id": "m", "root": d, "max_model_len": 64}]},
        vllm_complete,
    ),
}


class Tok:
    """Token t decodes as the letter chr(97 + t % 26); every prompt is 3 tokens."""

    chat_template = None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(97 + t % 26) for t in ids)

    def __call__(self, text: str, **kw: Any) -> dict[str, list[int]]:
        return {"input_ids": [1, 2, 3]}


@pytest.fixture
def model_dir(tmp_path: Path) -> str:
    cfg = {"num_hidden_layers": 4, "hidden_size": 8, "vocab_size": 26, "max_position_embeddings": 64}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return str(tmp_path)


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> Engine:
    return ENGINES[request.param]


@pytest.fixture
def serve(engine: Engine, model_dir: str) -> Iterator[Callable[..., FakeServer]]:
    """Start a fake ``engine`` server: its good answers, with ``info=``/``gen=`` replacing a route's answer."""
    started: list[FakeServer] = []

    def start(info: Any = None, gen: Any = None, port: int = 0) -> FakeServer:
        fake = FakeServer(
            {
                engine.info: js(engine.info_ok(model_dir)) if info is None else info,
                engine.gen: engine.gen_ok() if gen is None else gen,
            },
            port=port,
        )
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


def client(engine: Engine, url: str, **kw: Any) -> EngineClient:
    return engine.cls(url, tokenizer=Tok(), **kw)


def req(**kw: Any) -> GenerationRequest:
    return GenerationRequest(prompt="hi", sampling=SamplingParams(max_new_tokens=4, seed=1), **kw)


# ---- a working server ------------------------------------------------------------------------------------------
def test_generation_through_the_plugin_and_one_kept_alive_connection(engine, serve):
    fake = serve()
    be = client(engine, fake.url)
    assert be.num_layers == 4 and be.hidden_size == 8 and be.context_length == 64
    # the capabilities are what the plugin's probe answer says, not a list in the client
    assert be.capabilities.interventions == frozenset(CAPS["interventions"]) and be.plugin_version == "0.0-test"
    probe = fake.seen[1][2]
    assert fake.paths() == [engine.info, engine.gen] and "probe" in json.dumps(probe)
    [c] = be.generate(req(norms=NormSpec(layers=[0, 3], mask_massive=False), logprobs=0)).candidates
    assert c.completion_tokens == 4 and c.text == "abcd" and c.prompt_tokens == 3
    assert c.norms.array().tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]
    assert c.logprobs.self_certainty == [0.25] * 4
    [c] = be.generate(req(interventions=[{"kind": "alrr"}])).candidates
    assert c.interventions == {"alrr": {"steps": 4}}
    assert len({port for *_, port in fake.seen}) == 1  # four calls, one pooled keep-alive connection
    # what the plugin does not run is refused before anything is sent
    n = len(fake.seen)
    with pytest.raises(CapabilityError, match=r"cannot run 'erss'; it supports: alrr, suppress"):
        be.generate(req(interventions=[{"kind": "erss"}]))
    assert len(fake.seen) == n
    be.close()  # the pool is closed; a later call opens a new one
    assert be.generate(req()).candidates[0].completion_tokens == 4
    with be:
        pass


def test_a_server_without_the_plugin_or_with_an_older_one(engine, serve):
    with pytest.raises(BackendError, match=r"runs without the l2reason plugin \(no per-token norms came back\)"):
        client(engine, serve(gen=_no_records(engine)).url)
    # an older plugin answers the probe with norms but no capabilities
    with pytest.raises(BackendError, match=r"runs an older l2reason plugin: .* restart the server with this l2reason"):
        client(engine, serve(gen=engine.gen_ok(caps=None)).url)
    # ... or refuses the probe field it does not know
    old = _records_answer(engine, [{"e": "invalid l2reason settings: probe: Extra inputs are not permitted"}])
    with pytest.raises(BackendError, match=r"older l2reason plugin.*\(it answered: invalid l2reason settings"):
        client(engine, serve(gen=old).url)
    # a current plugin that fails the probe request itself says so (not "older plugin")
    failed = _records_answer(engine, [{"e": "l2reason: the vLLM plugin could not place this token in the step"}])
    with pytest.raises(BackendError, match=r"plugin of the \w+ server at .* failed the plugin probe .*: l2reason: the"):
        client(engine, serve(gen=failed).url)
    bad_slots = [{**CAPS, "active_slots": v} for v in (-1, "2", True, 1.5)]
    for bad in ({"interventions": "alrr"}, ["alrr"], {"interventions": [1]}, *bad_slots):
        with pytest.raises(BackendError, match=r"answered the plugin probe .* with malformed capabilities"):
            client(engine, serve(gen=engine.gen_ok(caps=bad)).url)


def test_caps_carry_the_slot_count_only_when_the_plugin_gives_it():
    assert "active_slots" not in caps()
    assert caps(active_slots=0)["active_slots"] == 0 and caps(active_slots=5)["active_slots"] == 5
    assert {k: v for k, v in caps(active_slots=3).items() if k != "active_slots"} == caps()


def test_active_slots_is_read_from_a_fresh_probe(engine, serve):
    held = {"n": 0}

    def gen(body: Any) -> tuple[int, bytes]:  # a plugin whose slot table changes between probes
        return engine.gen_ok(caps={**CAPS, "active_slots": held["n"]})(body)

    fake = serve(gen=gen)
    be = client(engine, fake.url)
    assert be.active_slots() == 0
    held["n"] = 3
    assert be.active_slots() == 3
    assert sum("probe" in json.dumps(body) for _, _, body, _ in fake.seen) == 3  # set-up's probe, then one each
    assert client(engine, serve().url).active_slots() is None  # a plugin that does not count


def _records_answer(engine: Engine, records: Any) -> Callable[[Any], tuple[int, bytes]]:
    """A generate route that answers one token with these records (as it is, in the engine's format)."""
    if engine.cls is SGLangBackend:
        meta = {"finish_reason": {"type": "length"}, "l2r": records}
        return lambda body: js([{"text": "a", "output_ids": [0], "meta_info": meta}] * len(body["input_ids"]))
    return lambda body: js({"choices": [{"text": "a", "token_ids": [0]}], "kv_transfer_params": {"l2r": records}})


def _no_records(engine: Engine) -> Callable[[Any], tuple[int, bytes]]:
    if engine.cls is SGLangBackend:
        return lambda body: js([{"text": "a", "output_ids": [0], "meta_info": {}}] * len(body["input_ids"]))
    return lambda body: js({"choices": [{"text": "a", "token_ids": [0]}], "kv_transfer_params": None})


# ---- broken answers, at set-up -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "msg"),
    [
        ((200, b"<html>it works</html>"), r"answered {info} \(HTTP 200\) with something that is not JSON"),
        ((200, b"\xff\xfe"), r"answered {info} \(HTTP 200\) with something that is not JSON"),
        (js([]), r"answered {info} with a JSON list where the model(.s info| list) should be a JSON object"),
        (js("ok"), r"answered {info} with a JSON string where"),
        ((200, b""), r"answered {info} with null \(or nothing\) where"),
        (js({}), r"(without a model_path|serves no model \({info} lists none\))"),
        (js({"data": [[]], "model_path": 7}), r"(without a model_path|answered {info} with a JSON list where a model)"),
        ((500, b"engine exploded"), r"server http://127\.0\.0\.1:\d+{info} answered HTTP 500: engine exploded"),
        (CLOSE, r"connection to the \w+ server at .* broke during {info} \(RemoteProtocolError"),
    ],
)
def test_a_broken_answer_at_set_up_names_the_server_and_route(engine, serve, answer, msg):
    fake = serve(info=answer)
    with pytest.raises(BackendError, match=msg.format(info=engine.info)) as ei:
        client(engine, fake.url, retries=3, backoff=0.01)
    assert fake.url in str(ei.value)
    assert fake.paths() == [engine.info]  # the server answered (or took the request): never sent again


def test_a_server_that_does_not_answer_in_time(engine, serve):
    fake = serve(info=Hang(30))
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=rf"sent no answer to {engine.info} within 0\.5 s; it is reachable but busy"):
        client(engine, fake.url, timeout=0.5)
    assert time.monotonic() - t0 < 5


# ---- broken answers, while generating --------------------------------------------------------------------------
def _bad_generation(engine: Engine) -> list[tuple[Any, str]]:
    """(an answer to a 2-candidate request, the message) for the engine's generate route."""
    good = engine.gen_ok()

    def then(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Any], tuple[int, bytes]]:
        def answer(body: Any) -> tuple[int, bytes]:
            out = json.loads(good(body)[1])
            return js(edit(out[0] if isinstance(out, list) else out))

        return answer

    if engine.cls is SGLangBackend:
        return [
            (then(lambda o: [o]), r"answered /generate with 1 outputs for 2 prompts"),
            (then(lambda o: [{**o, "meta_info": {}}] * 2), r"returned no l2reason records: it runs without the plugin"),
            (then(lambda o: [{**o, "output_ids": "xy"}] * 2), r"answered /generate with an unexpected shape"),
            (then(lambda o: [{**o, "meta_info": [1]}] * 2), r"with a JSON list where meta_info should be"),
            (then(lambda o: [7, 8]), r"with a JSON number where an output should be a JSON object"),
            (
                then(lambda o: [{**o, "meta_info": {**o["meta_info"], "l2r": [{"n": [1.0]}] * 4}}] * 2),
                r"a record for token 0 that holds no 2 norms \(got \[1\.0\]\)",
            ),
            (
                then(lambda o: [{**o, "meta_info": {**o["meta_info"], "l2r": o["meta_info"]["l2r"][:2]}}] * 2),
                r"plugin returned 2 records for 4 tokens",
            ),
            (
                then(lambda o: [{**o, "meta_info": {**o["meta_info"], "finish_reason": {"type": "abort"}}}] * 2),
                r"the SGLang server aborted the request",
            ),
        ]
    return [
        (then(lambda o: {**o, "choices": []}), r"answered /v1/completions with no choices"),
        (then(lambda o: {**o, "choices": [[]]}), r"with a JSON list where a choice should be a JSON object"),
        (then(lambda o: [o]), r"with a JSON list where a completion should be a JSON object"),
        (then(lambda o: {**o, "kv_transfer_params": [1]}), r"answered /v1/completions with an unexpected shape"),
        (then(lambda o: {**o, "kv_transfer_params": {"l2r": "x"}}), r"records that are not a list of JSON objects"),
        (then(lambda o: {**o, "usage": {"prompt_tokens": "many"}}), r"unexpected shape \(ValueError"),
    ]


def test_a_broken_answer_while_generating_names_the_server_and_route(engine, serve):
    fake = serve()
    be = client(engine, fake.url)
    two = req(n=2, norms=NormSpec(layers=[0, 3], mask_massive=False))
    for answer, msg in _bad_generation(engine):
        fake.routes[engine.gen] = answer
        with pytest.raises(BackendError, match=msg):
            be.generate(two)
    fake.routes[engine.gen] = (503, b"overloaded")
    with pytest.raises(BackendError, match=rf"{engine.gen} answered HTTP 503: overloaded"):
        be.generate(two)
    fake.routes[engine.gen] = CLOSE
    with pytest.raises(BackendError, match=rf"broke during {engine.gen}.*may have crashed or restarted"):
        be.generate(req())
    fake.routes[engine.gen] = _records_answer(engine, [{"e": "layer 9 does not exist"}])
    with pytest.raises(ConfigError, match="plugin rejected the request: layer 9 does not exist"):
        be.generate(req())
    fake.routes[engine.gen] = engine.gen_ok()
    assert be.generate(two).candidates[1].norms.T == 4  # and it keeps working


def _short_records(engine: Engine, keep: Callable[[list[Any]], Any]) -> Callable[[Any], tuple[int, bytes]]:
    """The plugin's good answer with each completion's record list replaced by ``keep(records)``."""
    good = engine.gen_ok()

    def answer(body: Any) -> tuple[int, bytes]:
        out = json.loads(good(body)[1])
        for o in out if isinstance(out, list) else [out]:
            box = o["meta_info"] if engine.cls is SGLangBackend else o["kv_transfer_params"]
            box["l2r"] = keep(box["l2r"])
        return js(out)

    return answer


@pytest.mark.parametrize(
    ("keep", "got"),
    [
        (lambda recs: recs[:2], r"returned 2 records for 4 tokens of {who} \(norms were asked for every token\)"),
        (lambda recs: [], r"returned 0 records for 4 tokens of {who}"),
        (
            lambda recs: None,
            r"returned no l2reason records: it runs without the plugin .* or the plugin lost norms for 4 tokens of {who}$",
        ),
    ],
)
def test_a_short_record_list_is_an_error_naming_the_request(engine, serve, keep, got):
    fake = serve()
    be = client(engine, fake.url)
    fake.routes[engine.gen] = _short_records(engine, keep)
    norms = NormSpec(layers=[0, 3], mask_massive=False)
    cases = [
        (req(n=2, norms=norms, request_id="item-7"), r"request 'item-7' \(candidate 0 of 2\)"),
        (req(norms=norms), r"the request 'hi'"),
        (
            GenerationRequest(messages=[{"role": "user", "content": "2+2?"}], norms=norms, sampling=req().sampling),
            r"the request '2\+2\?'",
        ),
    ]
    for r, who in cases:
        with pytest.raises(BackendError, match=got.format(who=who)):
            be.generate(r)
    fake.routes[engine.gen] = engine.gen_ok()
    assert be.generate(cases[0][0]).candidates[1].norms.T == 4  # and the next request is served whole


# ---- a dead server, and retries ------------------------------------------------------------------------------------
def test_a_dead_server_is_a_clear_error_within_the_timeout(engine):
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(
        BackendError, match=rf"cannot reach the {engine.cls.engine} server at http://127\.0\.0\.1:{port}"
    ):
        client(engine, f"http://127.0.0.1:{port}", timeout=1.0, retries=100, backoff=0.2)
    assert time.monotonic() - t0 < 3  # 100 retries were allowed, the timeout was not


def test_connection_errors_are_retried_with_backoff_until_the_server_is_up(engine, serve, caplog):
    port = free_port()
    timer = threading.Timer(0.6, lambda: serve(port=port))
    timer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="l2reason.backends.engine_client"):
            be = client(engine, f"http://127.0.0.1:{port}", retries=8, backoff=0.1)
    finally:
        timer.join()
    assert be.capabilities.interventions == frozenset(CAPS["interventions"])
    assert any("unreachable" in r.message and "retry 1 in 0.1s" in r.message for r in caplog.records)


# ---- arguments and addresses: checked before anything is contacted ------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"timeout": 0}, r"timeout must be a finite number of seconds > 0 \(got 0\)"),
        ({"timeout": -1.0}, r"timeout must be .* > 0 \(got -1\.0\)"),
        ({"timeout": math.nan}, r"timeout must be .* \(got nan\)"),
        ({"timeout": math.inf}, r"timeout must be .* \(got inf\)"),
        ({"timeout": "30"}, r"timeout must be .* \(got '30'\)"),
        ({"timeout": True}, r"timeout must be .* \(got True\)"),
        ({"retries": -1}, r"retries must be an integer >= 0 \(got -1\)"),
        ({"retries": 1.5}, r"retries must be an integer >= 0 \(got 1\.5\)"),
        ({"backoff": -0.5}, r"backoff must be a finite number of seconds >= 0 \(got -0\.5\)"),
        ({"backoff": math.inf}, r"backoff must be .* \(got inf\)"),
        ({"model": 5}, r"model must be a model spec string or None \(got int\)"),
    ],
)
def test_constructor_arguments_are_checked(engine, kw, msg):
    with pytest.raises(ConfigError, match=msg):
        client(engine, f"http://127.0.0.1:{free_port()}", **kw)


def test_vllm_concurrency_is_checked():
    for bad in (0, -3, 2.0, None):
        with pytest.raises(ConfigError, match=rf"concurrency must be an integer >= 1 \(got {bad}\)"):
            VLLMBackend(f"http://127.0.0.1:{free_port()}", concurrency=bad)


@pytest.mark.parametrize(
    ("spec", "msg"),
    [
        ("vllm://host:notaport", r"the port 'notaport' in a vLLM server address 'vllm://host:notaport' is not a "),
        ("sglang://h:99999", r"the port '99999' in an SGLang server address 'sglang://h:99999' is not a number from"),
        ("http://h:0", r"the port '0' in an SGLang server address 'http://h:0' is not a number from 1 to 65535"),
        ("vllm://h:-1", r"the port '-1' in a vLLM server address"),
        ("vllm://:8000", r"a vLLM server address 'vllm://:8000' names no host"),
        ("sglang://h:1?x=1", r"has a query or fragment; give only sglang://host:port"),
    ],
)
def test_malformed_addresses_fail_when_parsed_wherever_they_enter(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        check_spec(spec)
    with pytest.raises(ConfigError, match=msg):
        make_backend(spec)
    with pytest.raises(ConfigError, match=msg):
        get_backend(spec)
    cls = VLLMBackend if spec.startswith("vllm") else SGLangBackend
    with pytest.raises(ConfigError, match=msg):
        cls(spec)
    with pytest.raises(ConfigError, match=msg):
        (parse_vllm_url if cls is VLLMBackend else parse_url)(spec)


def test_well_formed_addresses():
    assert parse_server_url(" vllm://h:8000/ ", "vllm", "a vLLM server") == "http://h:8000"
    assert parse_url("https://[::1]:30000") == "https://[::1]:30000" and parse_url("http://h") == "http://h"
    assert parse_vllm_url("http://h:1/prefix") == "http://h:1/prefix"  # a router's path prefix is kept
    with pytest.raises(ConfigError, match=r"an SGLang server address must be a string .* got int"):
        SGLangBackend(8000)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="a model spec must be a string, got NoneType"):
        make_backend(None)  # type: ignore[arg-type]
