"""Fuzz: generated good and bad inputs through the request types, the backend, the CLI and the file readers.

Every generated input carries a tag saying whether it is valid. For each one the
test asserts the designed failure behaviour (``docs/guide.md``, "Errors and
limits"):

- a bad input raises a library error (:class:`l2reason.errors.L2ReasonError`)
  or a pydantic ``ValidationError`` with a non-empty message, and the backend
  raises it before its first forward pass (no decode step) and with no hook
  left on the model;
- a good input is accepted and generates (so the checks cannot pass by
  rejecting everything);
- a bad input that is accepted is a *silent acceptance*; any other exception
  is a *crash*; both fail the test;
- nothing takes longer than a time bound.

Every input is also counted per area in ``_fuzz.TALLY``; ``test_fuzz_summary.py`` prints the figures of the
whole fuzz run (``pytest -s``) and fails on any crash or silent acceptance. Here a failure also fails its own
test at once (hypothesis prints the input).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from _fuzz import cli_outcome, record
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

from l2reason.backends.base import GenerationRequest, Message, NormSpec, SamplingParams, SelectionSpec
from l2reason.backends.hf import HFBackend
from l2reason.errors import ConfigError, L2ReasonError
from l2reason.limits import MAX_N, MAX_NEW_TOKENS, MAX_PROMPT_CHARS

REQ_BACKEND = "requests through the backend"
REQ_MODEL = "requests refused by the model"
REQ_SKIP = "requests skipping pydantic"
CLI = "cli ask/trace/calibrate/eval/report"
CAL_FILES = "calibration files"
JSONL = "jsonl datasets"


def expect(cond: bool, area: str, outcome: str, what: str) -> None:
    """Assert ``cond``; when it fails, count ``outcome`` (a failure) for ``area`` first."""
    if not cond:
        record(area, outcome, what)
        raise AssertionError(what)


HANG_BOUND_S = 300.0
"""A CLI call running longer than this is hung (a hang detector, not a speed test: no speed is asserted)."""


def fuzz(max_examples: int) -> settings:
    return settings(FUZZ, max_examples=max_examples)


FUZZ = settings(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: the failing input is printed as generated
    derandomize=True,  # the same examples every run: a CI failure reproduces locally
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

L = 4  # layers of the tiny model
D = 32  # its hidden size


def good(s: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, bool]]:
    return s.map(lambda v: (v, True))


def bad(s: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, bool]]:
    return s.map(lambda v: (v, False))


def either(g: st.SearchStrategy[Any], b: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, bool]]:
    return st.one_of(good(g), bad(b))


NAN, INF = math.nan, math.inf
NONNUM = st.sampled_from(["abc", [1], {"a": 1}, None])

N = either(st.integers(1, 3), st.one_of(st.integers(max_value=0), st.integers(MAX_N + 1, 10**12), st.just(2.5), NONNUM))
MAX_NEW = either(
    st.integers(1, 3),
    st.one_of(st.integers(-(10**6), 0), st.integers(MAX_NEW_TOKENS + 1, 10**13), st.sampled_from([1.5, NAN, "x"])),
)
TEMP = either(
    st.floats(0.0, 2.0),
    st.one_of(st.sampled_from([NAN, INF, -INF, "hot"]), st.floats(-100, -0.01), st.floats(10.01, 1e9)),
)
TOP_P = either(st.floats(0.05, 1.0), st.sampled_from([0.0, -0.5, 1.5, NAN, INF]))
TOP_K = either(st.one_of(st.none(), st.integers(1, 50)), st.sampled_from([0, -1, 200, 10**8, 1.5, "k"]))  # vocab: 104
SEED = either(st.integers(0, 2**40), st.sampled_from([-1, -(2**70), 2**64, "s", 1.5]))
STOP = either(
    st.sampled_from([[], ["STOP"], "STOP", ["w1", "w2"]]),
    st.sampled_from([[""], ["x" * 2000], ["s"] * 100, [1], 5]),
)
LOGPROBS = either(st.one_of(st.none(), st.integers(0, 5)), st.sampled_from([-1, 51, 10**9, 1.5, "all"]))
NORMS = either(
    st.sampled_from(
        [
            None,
            {},
            {"layers": "band"},
            {"layers": [0, 2]},
            {"layers": "all", "tau": [1.0, 2.0, 3.0, 4.0]},
            {"layers": [1], "tau": [2.0]},
            {"layers": [-1]},
            {"per_token": False, "mask_massive": False},
        ]
    ),
    st.sampled_from(
        [
            {"layers": [7]},
            {"layers": [-5]},
            {"layers": [1, 1]},
            {"layers": [-1, 3]},
            {"layers": []},
            {"layers": "bogus"},
            {"layers": [1.5]},
            {"tau": [NAN]},
            {"tau": [-1.0]},
            {"tau": [1e39]},
            {"layers": [1], "tau": [1.0, 2.0]},
            {"tau": "calibrated"},
            {"massive_factor": INF},
            {"massive_factor": 0.5},
            {"tail_frac": 0.0},
            {"tail_frac": NAN},
            {"bogus": 1},
            5,
            "band",
        ]
    ),
)
# selections that need no norms or logprobs, so they combine with any NORMS/LOGPROBS draw
SELECTION = either(
    st.sampled_from([None, {"method": "majority"}, {"method": "random", "seed": 3}, {"method": "shortest"}]),
    st.sampled_from(
        [
            {"method": "bogus"},
            {"method": "majority", "seed": -1},
            {"method": "majority", "params": {"nope": 1}},
            {"method": "l2", "score": "X/T"},
            {"method": "l2", "tau": [NAN]},
            {"method": "l2", "tau": []},
            {"method": "l2-vote", "layers": [1, 1]},
            {"method": "deepconf", "params": {"keep_frac": INF}},
            {"method": "majority", "bogus": 1},
            "majority",
            3,
        ]
    ),
)
VEC = [0.1] * D
INTERVENTIONS = either(
    st.sampled_from(
        [
            [],
            [{"kind": "alrr"}],
            [{"kind": "alrr", "K": 2, "mode": "static"}],
            [{"kind": "erss", "M": 4, "S": 1}],
            [{"kind": "static_steer", "vectors": {1: VEC}, "alpha": 0.5}],
            [{"kind": "suppress", "target": "random"}],
            [{"kind": "alrr", "layers": [1, 2], "threshold": {"warmup": 0}}],
        ]
    ),
    st.sampled_from(
        [
            5,
            "alrr",
            {"kind": "alrr"},
            [5],
            [{"kind": "nope"}],
            [{"kind": "alrr", "K": 10**9}],
            [{"kind": "alrr", "K": -1}],
            [{"kind": "erss", "M": 10**9}],
            [{"kind": "erss", "S": 0}],
            [{"kind": "erss", "C": 10**12}],
            [{"kind": "static_steer", "vectors": {1: VEC[:-1]}}],
            [{"kind": "static_steer", "vectors": {9: VEC}}],
            [{"kind": "static_steer", "vectors": {1: [NAN] * D}}],
            [{"kind": "static_steer", "vectors": {1: VEC}, "alpha": INF}],
            [{"kind": "static_steer", "vectors": {1: [1e20] * D}, "alpha": 1e25}],
            [{"kind": "static_steer", "vectors": {1: VEC, -3: VEC}}],
            [{"kind": "static_steer", "vectors": {}}],
            [{"kind": "alrr", "layers": [1, 1]}],
            [{"kind": "alrr", "layers": [-1, 3]}],
            [{"kind": "alrr", "layers": [9]}],
            [{"kind": "alrr", "threshold": {"mode": "calibrated"}}],
            [{"kind": "alrr", "threshold": {"warmup": 10**9}}],
            [{"kind": "alrr", "b": NAN}],
            [{"kind": "erss", "beta": 2.0}],
            [{"kind": "suppress", "rate": -0.1}],
            [{"kind": "alrr", "bogus": 1}],
        ]
    ),
)
LONG = " ".join(["w1"] * 5000)  # 5000 tokens: beyond the tiny model's 4096 positions
INPUT = either(
    st.sampled_from(
        [
            {"prompt": "hello w1 w2"},
            {"messages": [{"role": "user", "content": "hello world"}]},
            {"messages": [{"role": "system", "content": "w3"}, {"role": "user", "content": "w1 ?"}]},
        ]
    ),
    st.sampled_from(
        [
            {"prompt": ""},
            {"prompt": "   "},
            {},
            {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]},
            {"messages": []},
            {"messages": [{"role": "system", "content": "w1"}]},
            {"messages": [{"role": "bogus", "content": "x"}]},
            {"messages": [{"role": "user", "content": 5}]},
            {"messages": "hello"},
            {"prompt": 5},
            {"prompt": LONG},
            {"prompt": "x" * (MAX_PROMPT_CHARS + 1)},
        ]
    ),
)


@st.composite
def request_kwargs(draw: st.DrawFn) -> tuple[dict[str, Any], bool, list[str]]:
    """A request's keyword arguments, whether every field is valid, and the names of the bad fields."""
    fields = {
        "n": draw(N),
        "logprobs": draw(LOGPROBS),
        "norms": draw(NORMS),
        "selection": draw(SELECTION),
        "interventions": draw(INTERVENTIONS),
    }
    sampling = {
        "max_new_tokens": draw(MAX_NEW),
        "temperature": draw(TEMP),
        "top_p": draw(TOP_P),
        "top_k": draw(TOP_K),
        "seed": draw(SEED),
        "stop": draw(STOP),
    }
    inp, inp_ok = draw(INPUT)
    # at most a few bad fields at once (mostly one), so each check is exercised on its own
    bad_budget = draw(st.integers(0, 2))
    kw: dict[str, Any] = dict(inp, sampling={"max_new_tokens": 2})  # a skipped bad field keeps a cheap good value
    bad_names = [] if inp_ok else ["input"]
    for name, (v, ok) in list(fields.items()) + [(f"sampling.{k}", x) for k, x in sampling.items()]:
        if not ok and len(bad_names) >= bad_budget:
            continue  # leave the field at its default
        if not ok:
            bad_names.append(name)
        if name.startswith("sampling."):
            kw.setdefault("sampling", {})[name.split(".", 1)[1]] = v
        else:
            kw[name] = v
    return kw, not bad_names, bad_names


@pytest.fixture(scope="module")
def fuzz_backend(tiny):
    be = HFBackend(tiny)
    calls = {"n": 0}

    def count(module: Any, args: Any) -> None:
        calls["n"] += 1

    handle = be.model.register_forward_pre_hook(count)
    yield be, calls
    handle.remove()


def _hook_snapshot(be: HFBackend) -> list[tuple[set[int], set[int], set[int]]]:
    return [(set(m._forward_hooks), set(m._forward_pre_hooks), set(m.mlp._forward_hooks)) for m in be.layers]


def _check_raised(e: BaseException, bad_names: list[str], what: str) -> None:
    expect(
        isinstance(e, L2ReasonError | ValidationError), REQ_BACKEND, "crash", f"{what}: a raw {type(e).__name__}: {e}"
    )
    expect(bool(str(e).strip()), REQ_BACKEND, "crash", f"{what}: an empty message from {type(e).__name__}")
    expect(bool(bad_names), REQ_BACKEND, "refused", f"{what}: a good input was rejected: {e}")


@fuzz(450)
@given(case=request_kwargs())
def test_fuzz_requests_through_the_backend(fuzz_backend, case):
    be, calls = fuzz_backend
    kw, ok, bad_names = case
    what = f"{kw!r:.400} (bad: {bad_names})"
    try:
        req = GenerationRequest(**kw)
    except Exception as e:
        _check_raised(e, bad_names, what)
        record(REQ_BACKEND, "clear")
        return
    before, hooks = calls["n"], _hook_snapshot(be)
    try:
        res = be.generate(req)
    except Exception as e:
        _check_raised(e, bad_names, what)
        late = f"{what}: rejected only after {calls['n'] - before} forward pass(es)"
        expect(calls["n"] == before, REQ_BACKEND, "crash", late)
        record(REQ_BACKEND, "clear")
        return
    finally:
        assert _hook_snapshot(be) == hooks, f"{what}: hooks left on the model"
        # bounded work, not time: a prefill and one pass per new token per candidate at most
        passes, most = calls["n"] - before, (req.sampling.max_new_tokens + 2) * req.n
        assert passes <= most, f"{what}: {passes} forward passes (at most {most} expected)"
    expect(ok, REQ_BACKEND, "silent", f"{what}: silently accepted")
    expect(len(res.candidates) == req.n, REQ_BACKEND, "wrong", f"{what}: {len(res.candidates)} candidates")
    record(REQ_BACKEND, "ok")


# bad only against the loaded model: each passes construction and must be refused by the backend's check
MODEL_BAD = st.sampled_from(
    [
        {"norms": {"layers": [7]}},
        {"norms": {"layers": [-1, 3]}},
        {"norms": {"layers": [0, 1], "tau": [1.0]}},
        {"norms": {"tau": "calibrated"}},
        {"sampling": {"max_new_tokens": 2, "top_k": 200}},
        {"sampling": {"max_new_tokens": 5000}},
        {"prompt": LONG, "messages": None},
        {"interventions": [{"kind": "static_steer", "vectors": {1: VEC[:-1]}}]},
        {"interventions": [{"kind": "static_steer", "vectors": {9: VEC}}]},
        {"interventions": [{"kind": "static_steer", "vectors": {1: [1e20] * D}, "alpha": 1e25}]},
        {"interventions": [{"kind": "static_steer", "vectors": {1: VEC, -3: VEC}}]},
        {"interventions": [{"kind": "alrr", "layers": [-1, 3]}]},
        {"interventions": [{"kind": "alrr", "layers": [9]}]},
        {"interventions": [{"kind": "erss", "threshold": {"mode": "calibrated"}}]},
        {"n": 2, "selection": {"method": "l2", "layers": [3]}, "norms": {"layers": [0, 1]}},
        {"n": 2, "selection": {"method": "l2", "tau": "calibrated"}},
        {"n": 2, "selection": {"method": "l2", "tau": [1.0, 2.0]}},
        {"n": 2, "selection": {"method": "self-certainty"}, "logprobs": None},
        {"n": 2, "selection": {"method": "l2"}, "norms": None},
        {"n": 2, "selection": {"method": "majority", "params": {"keep_frac": 0.5}}},
    ]
)


@fuzz(300)
@given(case=request_kwargs().filter(lambda c: c[1]), bad_part=MODEL_BAD)
def test_fuzz_model_checks_before_any_forward(fuzz_backend, case, bad_part):
    """A good request with one part that only the loaded model can refuse: refused before any forward pass."""
    be, calls = fuzz_backend
    kw = dict(case[0])
    for k, v in bad_part.items():
        kw[k] = {**kw.get(k, {}), **v} if k == "sampling" else v
    kw = {k: v for k, v in kw.items() if v is not None or k not in ("messages", "prompt")}
    req = GenerationRequest(**kw)  # constructs: the problem is only visible against the model
    before, hooks = calls["n"], _hook_snapshot(be)
    with pytest.raises(L2ReasonError) as info:
        be.generate(req)
    assert str(info.value).strip()
    expect(calls["n"] == before, REQ_MODEL, "crash", f"{kw!r:.300}: refused only after a forward pass")
    assert _hook_snapshot(be) == hooks
    record(REQ_MODEL, "clear")


BAD_UPDATES = st.sampled_from(
    [
        ("n", 0),
        ("n", 10**9),
        ("interventions", 5),
        ("interventions", [{"kind": "alrr", "K": 10**9}]),
        ("logprobs", 999),
        ("prompt", ""),
        ("norms", NormSpec.model_construct(layers=[99])),
        ("norms", NormSpec.model_construct(tau=[NAN])),
        ("sampling", SamplingParams.model_construct(max_new_tokens=10**12)),
        ("sampling", SamplingParams.model_construct(max_new_tokens=0)),
        ("sampling", SamplingParams.model_construct(seed=-5)),
        ("sampling", SamplingParams.model_construct(temperature=NAN)),
        ("selection", SelectionSpec.model_construct(method="bogus")),
        ("selection", SelectionSpec.model_construct(method="l2", tau=[INF])),
        ("selection", SelectionSpec.model_construct(method="majority", seed=-1)),
        ("norms", NormSpec.model_construct(layers=[1, 1])),
        ("norms", NormSpec.model_construct(massive_factor=INF)),
        ("messages", [Message.model_construct(role="user", content=7)]),
    ]
)


@fuzz(120)
@given(update=BAD_UPDATES, how=st.sampled_from(["copy", "construct"]))
def test_fuzz_requests_that_skip_pydantic(fuzz_backend, update, how):
    """``model_copy(update=...)`` and ``model_construct`` skip validation; the backend validates again."""
    be, calls = fuzz_backend
    name, value = update
    base = GenerationRequest(prompt="hello w1", sampling=SamplingParams(max_new_tokens=2))
    if how == "copy":
        req = base.model_copy(update={name: value})
    else:
        fields = {k: getattr(base, k) for k in GenerationRequest.model_fields}
        if name == "messages":
            fields["prompt"] = None
        req = GenerationRequest.model_construct(**{**fields, name: value})
    before = calls["n"]
    with pytest.raises(ConfigError) as info:
        be.generate(req)
    assert str(info.value).strip()
    expect(calls["n"] == before, REQ_SKIP, "crash", f"{update}: validated only after a forward pass")
    record(REQ_SKIP, "clear")


# ---- the CLI (in-process) ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tiny):
    """The model spec "tiny" resolves to the tiny test model (a saved word-level tokenizer does not reload as one)."""
    import l2reason.backends.shared as shared

    original = shared.make_backend

    def make_backend(spec, *args, **kw):
        return HFBackend(tiny) if spec == "tiny" else original(spec, *args, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(shared, "make_backend", make_backend)
    yield "tiny"
    mp.undo()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-files")
    (d / "prompts.txt").write_text("hello w1\nw2 w3 ?\nw4 w5 w6\n")
    (d / "latin1.txt").write_bytes("caf\xe9 w1\n".encode("latin-1"))
    (d / "empty.txt").write_text("\n\n")
    (d / "a_dir").mkdir()
    (d / "a_file.json").write_text("{}")
    return d


@st.composite
def cli_args(draw: st.DrawFn, model: str, files: Path) -> tuple[list[str], bool]:
    cmd = draw(st.sampled_from(["ask", "trace", "calibrate", "eval", "report", "models"]))
    if cmd == "models":
        return ["models"], True
    if cmd == "ask":
        q, q_ok = draw(either(st.sampled_from(["hello w1", "w2 ?"]), st.sampled_from(["", "   "])))
        opt, opt_ok = draw(
            either(
                st.sampled_from(
                    [
                        [],
                        ["-t", "2"],
                        ["--temperature", "0.5"],
                        ["--select", "majority", "-n", "2"],
                        ["--seed", "7"],
                        ["--select", "l2", "-n", "2", "--score", "D/T"],
                    ]
                ),
                st.sampled_from(
                    [
                        ["-t", "0"],
                        ["-t", "-3"],
                        ["-t", str(10**12)],
                        ["--temperature", "11"],
                        ["--temperature", "nan"],
                        ["--temperature", "x"],
                        ["--select", "bogus"],
                        ["--select", "l2", "-n", "0"],
                        ["--select", "l2", "--score", "Q/T"],
                        ["--seed", "-1"],
                        ["-n", str(10**9), "--select", "majority"],
                    ]
                ),
            )
        )
        return ["ask", q, "-m", model, *(opt if "-t" in opt else ["-t", "2", *opt])], q_ok and opt_ok
    if cmd == "trace":
        opt, ok = draw(
            either(
                st.sampled_from(
                    [["--layers", "all"], ["--layers", "1,2"], ["--layers", "-1"], ["-o", str(files / "new" / "x.png")]]
                ),  # missing folders are created
                st.sampled_from(
                    [
                        ["--layers", "a,b"],
                        ["--layers", ""],
                        ["--layers", "99"],
                        ["--layers", "1,1"],
                        ["--layers", "1,,2"],
                        ["-o", str(files / "x.bogusext")],
                        ["-o", str(files / "a_dir")],
                        ["-o", str(files / "a_file.json" / "x.png")],
                        ["--html", str(files / "a_dir")],
                    ]
                ),
            )
        )
        out = [] if "-o" in opt else ["-o", str(files / "trace.png")]
        return ["trace", "hello w1", "-m", model, "-t", "2", *out, *opt], ok
    if cmd == "calibrate":
        opt, ok = draw(
            either(
                st.sampled_from([["--prompts", str(files / "prompts.txt")]]),
                st.sampled_from(
                    [
                        ["--prompts", str(files / "latin1.txt")],
                        ["--prompts", str(files / "empty.txt")],
                        ["--prompts", str(files / "a_dir")],
                        ["--prompts", str(files / "missing.txt")],
                        ["--q", "2"],
                        ["--out", str(files / "a_dir")],
                        ["--batch-size", "0"],
                        ["-t", "1", "--prompts", str(files / "prompts.txt")],
                    ]
                ),
            )
        )
        out = [] if "--out" in opt else ["--out", str(files / "cal.json")]
        t = [] if "-t" in opt else ["-t", "12"]  # 3 prompts x 12 tokens: enough decode tokens to calibrate
        return ["calibrate", "-m", model, *t, *out, *opt], ok
    if cmd == "eval":
        opt = draw(
            st.sampled_from(
                [
                    ["--dataset", "gsm_symbolic:seed=abc"],
                    ["--dataset", "nope"],
                    ["--dataset", "chain_sum:bogus=1"],
                    ["--out", str(files / "a_file.json")],
                    ["--limit", "0"],
                    ["-n", "-1"],
                    ["--methods", "bogus"],
                    ["--gen-methods", "bogus"],
                    ["--dataset", f"jsonl:{files / 'missing.jsonl'}"],
                    ["--dataset", f"jsonl:{files / 'latin1.txt'}"],
                    ["--model", "does/not-exist"],
                ]
            )
        )
        out = [] if "--out" in opt else ["--out", str(files / "run")]
        base = ["eval", "-m", model] if "--model" not in opt else ["eval"]
        return [*base, "--limit", "1", "-n", "2", "-t", "2", *out, *opt], False
    opt = draw(st.sampled_from([str(files / "a_dir"), str(files / "missing"), str(files / "a_file.json")]))
    return ["report", opt], False


@fuzz(160)
@given(data=st.data())
def test_fuzz_cli(tiny_dir, files, data):
    from l2reason.cli import app

    args, ok = data.draw(cli_args(str(tiny_dir), files))
    t0 = time.perf_counter()
    res = CliRunner().invoke(app, args)
    took = time.perf_counter() - t0
    shown = f"{args}: exit {res.exit_code}, output {res.output[-600:]!r}"
    assert took < HANG_BOUND_S, f"{shown}: took {took:.1f}s (hung?)"
    # CliRunner stores an uncaught exception in `exception`; exits are SystemExit
    outcome = cli_outcome(CLI, args, res, bad=not ok)
    assert outcome in ("clear", "ok"), f"{outcome}: {shown}"


# ---- the file readers -----------------------------------------------------------------------------------


def _valid_calibration() -> dict[str, Any]:
    from l2reason.signal.calibration import fit_calibration

    g = torch.Generator().manual_seed(0)
    cal = fit_calibration(
        {1: torch.arange(1.0, 101.0), 2: 10.0 + torch.rand(50, generator=g)},
        model_id="tiny",
        num_layers=L,
        hidden_size=D,
        n_prompts=2,
        created_at="2026-01-01T00:00:00+00:00",
    )
    return json.loads(cal.model_dump_json())


JUNK = st.sampled_from([None, "x", "nan", NAN, INF, -1.0, 0.0, 1e39, -5, 10**30, [], [1.0], {}, True, [[1.0]], "1.0"])


@st.composite
def calibration_files(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A valid calibration file, or one mutated in one way (a field, its shape, the encoding, the nesting)."""
    data = _valid_calibration()
    required = sorted(
        k for k in data if k not in ("selection", "probe", "l2reason_version", "weights_sha256")
    )  # the optional ones may be absent
    how = draw(st.sampled_from(["none", "field", "element", "drop", "extra", "bytes", "nest", "truncate", "shape"]))
    if how == "none":  # the same content, written differently
        if draw(st.booleans()):
            data = dict(reversed(list(data.items())))
        return json.dumps(data, indent=draw(st.sampled_from([None, 1, 4]))).encode(), True
    if how == "field":
        key = draw(st.sampled_from(required))
        data[key] = draw(JUNK.filter(lambda v, k=key: v != data[k]))
    elif how == "element":
        key = draw(st.sampled_from([k for k in required if isinstance(data[k], list) and data[k]]))
        i = draw(st.integers(0, len(data[key]) - 1))
        data[key][i] = draw(st.sampled_from([NAN, INF, -1.0, 1e39, "x", None, [1.0]]))
    elif how == "drop":
        data.pop(draw(st.sampled_from(required)))
    elif how == "extra":
        data[draw(st.sampled_from(["bogus", "Tau", "layers_"]))] = 1
    elif how == "shape":
        key = draw(st.sampled_from([k for k in required if isinstance(data[k], list) and len(data[k]) > 1]))
        data[key] = data[key][:-1]
    elif how == "nest":
        data["tau"] = "__NEST__"
    text = json.dumps(data, allow_nan=True).encode()
    if how == "nest":
        k = draw(st.integers(40, 100_000))
        text = text.replace(b'"__NEST__"', b"[" * k + b"1.0" + b"]" * k)
    if how == "bytes":
        return text[:20] + b"\xff\xfe" + text[20:], False
    if how == "truncate":
        return text[: draw(st.integers(0, len(text) - 1))], False
    return text, False


@fuzz(250)
@given(case=calibration_files())
def test_fuzz_calibration_files(tmp_path_factory, case):
    from l2reason.signal.calibration import Calibration

    raw, ok = case
    path = tmp_path_factory.mktemp("cal") / "cal.json"
    path.write_bytes(raw)
    try:
        cal = Calibration.load(path, expected_model_id="tiny", expected_num_layers=L, expected_hidden_size=D)
    except Exception as e:
        from l2reason.errors import CalibrationError

        raw_error = f"a raw {type(e).__name__} for {raw[:200]!r}: {e}"
        expect(isinstance(e, CalibrationError) and bool(str(e).strip()), CAL_FILES, "crash", raw_error)
        expect(not ok, CAL_FILES, "refused", f"a valid file was refused: {e}")
        record(CAL_FILES, "clear")
        return
    expect(ok, CAL_FILES, "silent", f"a corrupt calibration file was accepted: {raw[:300]!r}")
    expect(cal.layers == [1, 2], CAL_FILES, "wrong", f"layers {cal.layers}")
    record(CAL_FILES, "ok")


JSONL_BAD_LINES = st.sampled_from(
    [
        b'{"question": "q", "answer": NaN}',
        b'{"question": "q", "answer": Infinity}',
        b'{"question": "q", "answer": 1e999}',
        b'{"question": "q"}',
        b'{"answer": 3}',
        b'{"question": 5, "answer": 3}',
        b'{"question": "q", "answer": 3, "id": [1]}',
        b'{"question": "q", "answer": 3, "id": {"a": 1}}',
        b'{"question": "q", "answer": 3, "id": true}',
        b'{"question": "q", "answer": 3, "id": null}',
        b"[1, 2]",
        b'"just a string"',
        b'{"question": "q", "answer": 3',
        b'{"question": "caf\xe9", "answer": 3}',
        b'{"question": "q", "answer": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}',
        b'{"question": "", "answer": 3}',
        b'{"question": "q", "answer": ""}',
        b'{"question": "q", "answer": 3, "question": "r"',
    ]
)
JSONL_GOOD_LINES = st.sampled_from(
    [
        b'{"question": "2 + 2?", "answer": 4}',
        b'{"question": "q", "answer": "x", "id": "a1"}',
        b"",
        b'{"question": "q", "answer": 3.5, "id": 7}',
    ]
)


@fuzz(250)
@given(lines=st.lists(either(JSONL_GOOD_LINES, JSONL_BAD_LINES), min_size=1, max_size=6))
def test_fuzz_jsonl_datasets(tmp_path_factory, lines):
    from l2reason.eval.datasets import JSONLDataset

    raw = b"\n".join(v for v, _ in lines)
    ok = all(g for _, g in lines) and any(v.strip() for v, _ in lines)
    bad_lines = [i + 1 for i, (_, g) in enumerate(lines) if not g]
    seen_ids: set[bytes] = set()
    for i, (v, g) in enumerate(lines):  # a repeated id is a bad line too
        if g and b'"id"' in v:
            if v in seen_ids:
                bad_lines.append(i + 1)
                ok = False
            seen_ids.add(v)
    path = tmp_path_factory.mktemp("jsonl") / "d.jsonl"
    path.write_bytes(raw)
    try:
        items = JSONLDataset(path).items()
    except Exception as e:
        expect(isinstance(e, ConfigError), JSONL, "crash", f"a raw {type(e).__name__} for {raw!r}: {e}")
        expect(not ok, JSONL, "refused", f"a valid dataset was refused: {e}")
        if bad_lines:
            named = [k for k in bad_lines if f"line {k}" in str(e) or f".jsonl:{k}:" in str(e)]
            expect(bool(named), JSONL, "wrong", f"the error names none of the bad lines {bad_lines}: {e}")
        record(JSONL, "clear")
        return
    expect(ok, JSONL, "silent", f"a bad JSONL file was accepted: {raw!r}")
    expect(len(items) == sum(1 for v, _ in lines if v.strip()), JSONL, "wrong", f"{len(items)} items from {raw!r}")
    record(JSONL, "ok")


# ---- the generators themselves ----------------------------------------------------------------------------------


def test_fuzz_cases_include_both_kinds():
    """The strategies really generate good and bad values (a fuzz test that only tries one kind cannot fail)."""
    seen = {True: 0, False: 0}

    @fuzz(200)
    @given(case=request_kwargs())
    def inner(case):
        seen[case[1]] += 1

    inner()
    assert seen[True] >= 20 and seen[False] >= 100, seen
    assert torch.get_num_threads() >= 1
