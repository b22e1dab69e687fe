"""Fuzz: the engine clients (``SGLangBackend``, ``VLLMBackend``) against a real HTTP server in a thread.

The server is ``test_engine_client.FakeServer`` (Python's ``ThreadingHTTPServer`` on a real port, speaking each
engine's wire format as the l2reason plugin does); nothing in the client is mocked. Generated per engine:

- **addresses and constructor arguments**: malformed addresses, ports, timeouts, retries, back-offs, model and
  calibration arguments (bad: each refused with a library error before or while connecting);
- **what the server answers** at set-up (the model route, the plugin probe) and to a generation: garbage,
  JSON of the wrong shape, HTTP errors, a dropped connection, records that are missing, not a list, short,
  or hold no norms, malformed capabilities, an aborted request, bad logprobs (bad: any of them; the client
  must raise a library error naming the server, never another exception nor a result);
- **requests** the plugin cannot run or the model does not have (bad: refused before anything is sent);
- good servers and requests, whose results must carry the norms and text the server sent.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
from _fuzz import assert_clean, call
from test_engine_client import CAPS, CLOSE, ENGINES, FakeServer, Tok, js

from l2reason.backends.base import GenerationRequest
from l2reason.backends.sglang import SGLangBackend

AREA = "engine clients"
NAN = math.nan


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("engine-model")
    cfg = {"num_hidden_layers": 4, "hidden_size": 8, "vocab_size": 26, "max_position_embeddings": 64}
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


@pytest.fixture(scope="module")
def fake() -> Any:
    server = FakeServer({})
    server.httpd.RequestHandlerClass.disable_nagle_algorithm = True  # no 40 ms delayed-ACK wait per answer
    yield server
    server.stop()


def _mutated(engine: Any, mutate: Callable[[Any], Any], caps: Any = CAPS) -> Callable[[Any], tuple[int, bytes]]:
    """The engine's good generate answer, passed through ``mutate`` (which returns the JSON to send)."""
    good = engine.gen_ok(caps=caps)

    def answer(body: Any) -> tuple[int, bytes]:
        _, raw = good(body)
        out = mutate(json.loads(raw))
        return out if isinstance(out, tuple) or out == CLOSE else js(out)

    return answer


def _records_of(engine: Any, out: Any) -> list[Any]:
    """The records list inside a good answer (SGLang: the first output's; vLLM: the completion's)."""
    if engine.cls is SGLangBackend:
        return out[0]["meta_info"]["l2r"]
    return out["kv_transfer_params"]["l2r"]


def _set_records(engine: Any, out: Any, value: Any) -> Any:
    if engine.cls is SGLangBackend:
        for o in out:
            o["meta_info"]["l2r"] = value
    else:
        out["kv_transfer_params"]["l2r"] = value
    return out


def _ids_key(engine: Any, out: Any) -> dict[str, Any]:
    return out[0] if engine.cls is SGLangBackend else out["choices"][0]


RAW_BAD: list[Any] = [
    (200, b"<html>it works</html>"),
    (200, b"\xff\xfe{"),
    (200, b""),
    (200, b'{"truncated": '),
    (500, b"engine exploded"),
    (404, b"no such route"),
    (503, b""),
    js([]),
    js("ok"),
    js(7),
    CLOSE,
]


def _record_mutations(engine: Any) -> list[Callable[[Any], Any]]:
    """Ways to break a generate answer's records (every one must be refused)."""

    def rec(fn: Callable[[list[Any]], Any]) -> Callable[[Any], Any]:
        def mutate(out: Any) -> Any:
            recs = _records_of(engine, out)
            new = fn(recs)
            return _set_records(engine, out, new)

        return mutate

    def first(r: list[Any], **change: Any) -> list[Any]:
        return [{**r[0], **change}, *r[1:]]

    def norms(fn: Callable[[list[Any]], Any]) -> Callable[[Any], Any]:
        return rec(lambda r: first(r, n=fn(r[0]["n"])))

    return [
        rec(lambda r: None),
        rec(lambda r: {"n": [1.0]}),
        rec(lambda r: "records"),
        rec(lambda r: 5),
        rec(lambda r: [5, *r[1:]]),
        rec(lambda r: [[1.0], *r[1:]]),
        rec(lambda r: r[:-1]),
        rec(lambda r: []),
        rec(lambda r: first(r, e="invalid l2reason settings: boom")),
        norms(lambda n: None),
        norms(lambda n: "1.0"),
        norms(lambda n: n[:-1]),
        norms(lambda n: [*n, 1.0]),
        norms(lambda n: ["x"] * len(n)),
        norms(lambda n: [None] * len(n)),
        norms(lambda n: [[1.0]] * len(n)),
    ]


def _shape_mutations(engine: Any) -> list[Callable[[Any], Any]]:
    """Ways to break a generate answer's outer shape (every one must be refused)."""

    def first(o: list[Any], **change: Any) -> list[Any]:
        return [{**o[0], **change}, *o[1:]]

    def meta(o: list[Any], **change: Any) -> list[Any]:
        return first(o, meta_info={**o[0]["meta_info"], **change})

    def choice(o: dict[str, Any], **change: Any) -> dict[str, Any]:
        return {**o, "choices": [{**o["choices"][0], **change}]}

    if engine.cls is SGLangBackend:
        return [
            lambda o: o[:-1] if len(o) > 1 else [],
            lambda o: o + o,
            lambda o: [5, *o[1:]],
            lambda o: first(o, meta_info="meta"),
            lambda o: first(o, output_ids=["a", "b"]),
            lambda o: first(o, output_ids=5),
            lambda o: meta(o, finish_reason={"type": "abort"}),
            lambda o: meta(o, prompt_tokens="many"),
        ]
    return [
        lambda o: {**o, "choices": []},
        lambda o: {**o, "choices": "text"},
        lambda o: {**o, "choices": [5]},
        lambda o: choice(o, token_ids=["a"]),
        lambda o: choice(o, token_ids={"a": 1}),
        lambda o: {**o, "kv_transfer_params": "params"},
        lambda o: {**o, "usage": {"prompt_tokens": "many"}},
        lambda o: [o],
    ]


BAD_CAPS: list[Any] = [None, "alrr", ["alrr"], {"interventions": "alrr"}, {"interventions": [1]}, {"plugin": "x"}]


def _bad_info(engine: Any, model_dir: str) -> list[Any]:
    ok = engine.info_ok(model_dir)
    if engine.cls is SGLangBackend:
        shapes = [js({}), js({"model_path": 7}), js({"model_path": ""}), js({**ok, "model_path": None})]
    else:
        shapes = [js({}), js({"data": []}), js({"data": [5]}), js({"data": [{"id": 5}]}), js({"data": "m"})]
    return RAW_BAD + shapes


GOOD_REQS: list[dict[str, Any]] = [
    {},
    {"n": 2},
    {"n": 3, "sampling": {"max_new_tokens": 2, "seed": 3, "temperature": 0.7}},
    {"norms": {"layers": [0, 3], "mask_massive": False}},
    {"norms": {"layers": "all"}},
    {"norms": None},
    {"interventions": [{"kind": "alrr"}]},
    {"interventions": [{"kind": "suppress"}], "n": 2},
    {"logprobs": 0},
    {"n": 2, "selection": {"method": "majority"}},
]
BAD_REQS: list[dict[str, Any]] = [
    {"interventions": [{"kind": "erss"}]},  # the plugin does not run it (CAPS)
    {"interventions": [{"kind": "alrr"}, {"kind": "alrr", "K": 2}]},
    {"norms": {"layers": [9]}},
    {"norms": {"layers": [-1, 3]}},
    {"norms": {"tau": "calibrated"}},
    {"sampling": {"max_new_tokens": 64}},  # the context is 64
    {"sampling": {"max_new_tokens": 2, "top_k": 27}},  # the vocabulary is 26
    {"n": 2, "selection": {"method": "l2", "layers": [3]}, "norms": {"layers": [0, 1]}},
    {"collect": {"layers": [1]}},  # the engine clients return no states
]


def _request(kw: dict[str, Any]) -> GenerationRequest:
    base: dict[str, Any] = {"prompt": "hi", "sampling": {"max_new_tokens": 4, "seed": 1}}
    return GenerationRequest(**{**base, **kw})


def _check_result(engine: Any, kw: dict[str, Any]) -> Callable[[Any], None]:
    """What the good server sent: norms ``layer + t`` of the layers asked, the first T letters of the text."""

    def check(res: Any) -> None:
        req = _request(kw)
        assert len(res.candidates) == req.n, res
        T = req.sampling.max_new_tokens
        for c in res.candidates:
            assert c.completion_tokens == T and c.text == "abcdefgh"[:T], c
            if req.norms is None:
                assert c.norms is None
                continue
            layers = c.norms.layers
            want = [[float(layer + t) for layer in layers] for t in range(T)]
            assert c.norms.array().tolist() == want, c.norms
        for iv in req.interventions:
            assert res.candidates[0].interventions.get(iv.kind) == {"steps": T}

    return check


ARG_CASES: list[tuple[dict[str, Any], bool]] = [
    ({"timeout": 0}, True),
    ({"timeout": -1}, True),
    ({"timeout": NAN}, True),
    ({"timeout": "soon"}, True),
    ({"timeout": True}, True),
    ({"retries": -1}, True),
    ({"retries": 1.5}, True),
    ({"backoff": -0.5}, True),
    ({"backoff": math.inf}, True),
    ({"model": 5}, True),
    ({"model": "another/model"}, True),
    ({"calibration": 5}, True),
    ({"calibration": "/nonexistent/cal.json"}, True),
    ({"calibration": ["cal.json"]}, True),
    ({"timeout": 30}, False),
    ({"retries": 0, "backoff": 0}, False),
    ({"calibration": None}, False),
]
BAD_ADDRESSES: list[Any] = [
    5,
    "",
    "localhost:8000",
    "ftp://127.0.0.1:8000",
    "http://",
    "http://:8000",
    "http://127.0.0.1:0",
    "http://127.0.0.1:99999",
    "http://127.0.0.1:port",
    "http://127.0.0.1:8000?x=1",
    "http://127.0.0.1:8000#frag",
    "http://127.0.0.1:1",  # nothing listens there: refused connection
]


def _case(engine: Any, rng: random.Random, model_dir: str, url: str) -> tuple[str, dict[str, Any], Any, Any, bool]:
    """``(what, constructor kwargs, info answer, generate answer, bad)`` plus the request in the kwargs."""
    info_ok, gen_ok = js(engine.info_ok(model_dir)), engine.gen_ok()
    kind = rng.choices(["good", "args", "address", "info", "probe", "records", "shape", "raw", "request"],
                       weights=[14, 6, 5, 8, 6, 16, 10, 8, 9])[0]  # fmt: skip
    req = dict(rng.choice(GOOD_REQS))
    kw: dict[str, Any] = {"url": url, "req": req}
    if kind == "good":
        return "good server and request", kw, info_ok, gen_ok, False
    if kind == "args":
        extra, bad = rng.choice(ARG_CASES)
        return f"arguments {extra}", {**kw, **extra}, info_ok, gen_ok, bad
    if kind == "address":
        return "address", {**kw, "url": rng.choice(BAD_ADDRESSES)}, info_ok, gen_ok, True
    if kind == "info":
        return "model route", kw, rng.choice(_bad_info(engine, model_dir)), gen_ok, True
    if kind == "probe":
        caps = rng.choice(BAD_CAPS)
        return f"probe caps {caps!r}", kw, info_ok, engine.gen_ok(caps=caps), True
    if kind == "request":
        return "request", {**kw, "req": rng.choice(BAD_REQS)}, info_ok, gen_ok, True
    # a generate answer broken only for the request (the probe is answered well)
    pool = {"records": _record_mutations, "shape": _shape_mutations}.get(kind)
    if pool is not None:
        m = rng.choice(pool(engine))
        broken = _mutated(engine, m)
    else:
        raw = rng.choice(RAW_BAD)
        broken = (lambda body, raw=raw: raw) if raw != CLOSE else CLOSE
    kw["req"] = {k: v for k, v in req.items() if k != "norms"}  # the records hold norms: ask for them
    return f"generate answer ({kind})", {**kw, "broken": broken}, info_ok, gen_ok, True


class LateRefusal(Exception):
    """A request refused only after it went to the server (a failure: it is checkable before)."""


def _run(engine: Any, fake: Any, kw: dict[str, Any], info: Any, gen: Any) -> Any:
    """Construct the client against ``fake`` (set-up answers ``info``, ``gen``) and generate the request."""
    fake.routes = {engine.info: info, engine.gen: gen}
    args = {k: v for k, v in kw.items() if k not in ("url", "req", "broken")}
    args.setdefault("retries", 0)
    args.setdefault("timeout", 5.0)
    be = engine.cls(kw["url"], tokenizer=Tok(), **args)
    try:
        if "broken" in kw:
            fake.routes[engine.gen] = kw["broken"]
        before = len(fake.seen)
        try:
            return be.generate(_request(kw["req"]))
        except Exception as e:
            if "broken" not in kw and len(fake.seen) != before:
                raise LateRefusal(f"refused only after sending the request: {e}") from e
            raise
    finally:
        be.close()


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_fuzz_engine_clients(name, fake, model_dir):
    engine = ENGINES[name]
    rng = random.Random(f"engines-{name}")
    for _ in range(220):
        what, kw, info, gen, bad = _case(engine, rng, model_dir, fake.url)
        label = f"{name}: {what}: {json.dumps(kw, default=repr)[:300]}"
        call(AREA, label, lambda: _run(engine, fake, kw, info, gen), bad=bad, check=_check_result(engine, kw["req"]))
    if name == max(ENGINES):
        assert_clean(AREA, at_least=440)
