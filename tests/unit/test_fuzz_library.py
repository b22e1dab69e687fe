"""Fuzz: calibration ``selection`` sections, LangChain tools and tool-call arguments, intervention lists.

Each area generates good and bad inputs from a fixed seed and classifies every one (``_fuzz.py``): a bad input
must be refused with a library error, a good one accepted with the right result. What is *bad* here:

- **calibration selection** (the section ``l2reason calibrate --select`` writes and ``l2-auto`` reads): no
  ``layers`` or ``score``; layers that are not distinct ints inside the model; a score, method, direction or
  τ the selector does not have; a ``split`` that is not ``{"item_ids": [str, ...]}``. Sent three ways: as
  ``Calibration.with_selection``, inside a calibration file (``Calibration.load``), and as a run's stored
  ``auto_selection`` (``selection_spec("l2-auto", auto=...)``, which cannot know the model's depth).
- **langchain tools**: ``bind_tools`` with anything that is not a tool (a plain class, a lambda, a number, a
  dict without a usable name or with a non-object schema, repeated names, a bad ``tool_choice``); tool-call
  arguments that are not a JSON object of finite values, written into the prompt; model answers whose
  ``<tool_call>`` JSON holds NaN/Infinity (not JSON) must not become calls.
- **request specs**: intervention lists where a kind repeats (SAE ablation: a layer repeats), or one spec is
  bad, validated against the tiny model (and an engine's capabilities for ``sae_ablate``); good lists are
  generated and each kind reports.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any, TypedDict

import pytest
from _fuzz import assert_clean, call, record
from pydantic import BaseModel

from l2reason.errors import ConfigError

NAN, INF = math.nan, math.inf
L = 4  # the tiny model's layers

# ---- calibration selection sections ------------------------------------------------------------------------------

CAL_SEL = "calibration selection"

GOOD_SECTION: dict[str, Any] = {
    "method": "l2",
    "score": "B/T",
    "layers": [1, 2],
    "direction": "high",
    "tau": "pooled",
    "metric": "within_auc",
    "value": 0.61,
    "accuracy": 0.5,
    "pairs": 12,
    "default_band": None,
    "table": [],
    "split": {"dataset": "chain_sum", "offset": 0, "limit": 2, "n": 4, "item_ids": ["a", "b"]},
}
# (key, value, bad, needs the model's depth to tell)
SECTION_VALUES: list[tuple[str, Any, bool, bool]] = [
    *[("layers", v, False, False) for v in ([0], [3], [1, 2, 3], [0, 3])],
    *[("layers", v, True, True) for v in ([99], [4], [0, 7])],
    *[("layers", v, True, False) for v in ([], [1, 1], [-1], [-1, 3], ["1"], [True], [1.5], 1, "band", None)],
    *[("score", v, False, False) for v in ("A/T", "B/T", "C/T", "D/T", "z_mean")],
    *[("score", v, True, False) for v in ("X/T", "", "b/t", 5, None, ["B/T"])],
    *[("direction", v, False, False) for v in ("high", "low")],
    *[("direction", v, True, False) for v in ("sideways", "", "HIGH", 1, None, True)],
    *[("method", v, False, False) for v in ("l2", "l2-vote")],
    *[("method", v, True, False) for v in ("majority", "bogus", 5, None)],
    *[("tau", v, False, False) for v in ("pooled",)],
    *[("tau", v, True, False) for v in ("calibrated", [1.0, 2.0], 5, None)],
    *[("split", v, False, False) for v in ({"item_ids": []}, {"item_ids": ["x"], "n": 2}, {})],
    *[("split", v, True, False) for v in ([1, 2], "x", {"item_ids": "abc"}, {"item_ids": [1, 2]}, 5)],
    *[("metric", v, False, False) for v in ("within_auc", "anything")],
    *[("extra_key", v, False, False) for v in (1, "x")],
]
REQUIRED = ("layers", "score")


def _section(rng: random.Random) -> tuple[Any, bool, bool]:
    """A selection section: ``(section, bad, bad only against the model's depth)``."""
    how = rng.random()
    sec = json.loads(json.dumps(GOOD_SECTION))
    if how < 0.08:
        return sec, False, False
    if how < 0.16:
        sec.pop(rng.choice(REQUIRED))
        return sec, True, False
    if how < 0.2:
        for k in [k for k in sec if k not in REQUIRED]:
            sec.pop(k)  # the minimal section
        return sec, False, False
    if how < 0.23:
        return rng.choice([[1, 2], "B/T", 5, True]), True, False
    structural = depth = False
    for _ in range(rng.choice([1, 1, 1, 2])):
        key, value, b, d = rng.choice(SECTION_VALUES)
        sec[key] = value
        depth, structural = depth or (b and d), structural or (b and not d)
    return sec, structural or depth, depth and not structural


def _check_spec(sec: dict[str, Any]) -> Any:
    def check(spec: Any) -> None:
        assert spec.layers == sec["layers"] and spec.score == sec["score"], spec
        assert spec.method == sec.get("method", "l2") and spec.tau == "pooled"
        assert spec.params == ({"direction": "low"} if sec.get("direction") == "low" else {}), spec.params

    return check


def test_fuzz_calibration_selection_sections(tmp_path):
    from test_fuzz_inputs import _valid_calibration

    from l2reason.eval.methods import AUTO, selection_spec
    from l2reason.signal.calibration import Calibration

    rng = random.Random(20261)
    base = Calibration.model_validate(_valid_calibration())
    for i in range(260):
        sec, bad, depth_only = _section(rng)
        what = f"selection {sec!r:.300}"

        def with_selection(sec: Any = sec) -> Any:
            return base.with_selection(sec)

        def check_cal(cal: Any, sec: Any = sec) -> None:
            assert cal.selection == sec, cal.selection

        call(CAL_SEL, f"with_selection {what}", with_selection, bad=bad, check=check_cal)
        if i % 2 == 0:
            path = tmp_path / f"cal{i}.json"
            data = _valid_calibration()
            data["selection"] = sec
            path.write_text(json.dumps(data, allow_nan=True), encoding="utf-8")
            call(
                CAL_SEL,
                f"calibration file with {what}",
                lambda p=path: Calibration.load(p, expected_model_id="tiny", expected_num_layers=L),
                bad=bad,
                check=check_cal,
            )
        if not depth_only:  # a run's stored auto_selection: the model's depth is not known there
            call(
                CAL_SEL,
                f"selection_spec(l2-auto) {what}",
                lambda s=sec: selection_spec(AUTO, auto=s),
                bad=bad,
                check=_check_spec(sec) if isinstance(sec, dict) else None,
            )
    assert_clean(CAL_SEL, at_least=500)


# ---- LangChain tools ----------------------------------------------------------------------------------------------

LC_BIND = "langchain bind_tools"
LC_ARGS = "langchain tool-call arguments"
LC_PARSE = "langchain parsed answers"


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def mul(x: float, y: float = 2.0) -> float:
    """Multiply two numbers."""
    return x * y


class Person(BaseModel):
    """A person."""

    name: str
    born: int


class Point(TypedDict):
    """A point."""

    x: int
    y: int


class Plain:
    """Not a tool: a plain class."""


class WithInit:
    def __init__(self, a: int) -> None:
        self.a = a


def _lc_tool() -> Any:
    from langchain_core.tools import tool

    @tool
    def lookup(key: str) -> str:
        """Look a key up."""
        return key

    return lookup


def _good_tools() -> list[Any]:
    return [
        add,
        mul,
        Person,
        Point,
        _lc_tool(),
        {"type": "function", "function": {"name": "neg", "description": "negate", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "noargs"}},
        {"name": "div", "description": "divide", "parameters": {"type": "object", "properties": {"a": {}}}},
        {"title": "Schema_1", "type": "object", "properties": {"q": {"type": "string"}}},
    ]


BAD_TOOLS: list[Any] = [
    5,
    "add",
    None,
    Plain,
    WithInit,
    lambda x: x,
    {"name": 5},
    {"name": ""},
    {"name": "a b"},
    {"name": "<lambda>"},
    {"type": "function", "function": {}},
    {"type": "function", "function": {"name": None}},
    {"type": "function", "function": "add"},
    {"name": "ok", "parameters": 5},
    {"name": "ok", "parameters": "x"},
    {"name": "ok", "parameters": {"type": "object", "properties": {"a": {"default": NAN}}}},
    {"name": "ok", "description": 5},
    {"name": "x" * 300},
    {},
    [add],
]
GOOD_CHOICES = [None, "auto", "none", "any", "required", True, False]
BAD_CHOICES = ["bogus", 5, {"type": "function"}, {"function": {"name": 7}}, ["add"], {"name": "missing"}]


def _tool_names(formatted: list[dict[str, Any]]) -> list[str]:
    return [t["function"]["name"] for t in formatted]


def _bind_case(rng: random.Random) -> tuple[Any, Any, bool]:
    goods = _good_tools()
    k = rng.randint(1, 3)
    tools = rng.sample(goods, k)
    bad = False
    r = rng.random()
    if r < 0.45:
        tools[rng.randrange(k)] = rng.choice(BAD_TOOLS)
        bad = True
    elif r < 0.5:
        tools = [*tools, tools[0]]  # a repeated name
        bad = True
    elif r < 0.55:
        tools = rng.choice([5, "add", add, {"name": "add"}])  # not a list of tools
        bad = True
    choice: Any = rng.choice(GOOD_CHOICES)
    if rng.random() < 0.15:
        choice, bad = rng.choice(BAD_CHOICES), True
    elif rng.random() < 0.3 and isinstance(tools, list):
        choice = rng.choice(["first", "dict"])
    return tools, choice, bad


def test_fuzz_langchain_bind_tools(tiny_backend):
    from l2reason.backends.base import Message
    from l2reason.langchain import ChatL2Reason
    from l2reason.langchain.tools import render_prompt, tool_plan

    llm = ChatL2Reason(backend=tiny_backend, max_tokens=2)
    rng = random.Random(20262)
    for _ in range(220):
        tools, choice, bad = _bind_case(rng)
        if choice in ("first", "dict"):
            from l2reason.langchain.tools import openai_tools

            try:
                first = _tool_names(openai_tools([tools[0]]))[0]
            except ConfigError:
                first = "add"
            choice = first if choice == "first" else {"type": "function", "function": {"name": first}}
        what = f"bind_tools({tools!r:.200}, tool_choice={choice!r})"

        def check(bound: Any, choice: Any = choice) -> None:
            formatted = bound.kwargs["tools"]
            for t in formatted:
                json.dumps(t, allow_nan=False)
            show, prefix = tool_plan(formatted, choice)
            msgs = [Message(role="user", content="hello w1")]
            text = render_prompt(tiny_backend.tokenizer, msgs, formatted if show else [], prefix)
            if show:
                assert all(n in text for n in _tool_names(formatted)), text[:300]

        call(LC_BIND, what, lambda t=tools, c=choice: llm.bind_tools(t, tool_choice=c), bad=bad, check=check)
    assert_clean(LC_BIND, at_least=200)


GOOD_ARGS: list[Any] = [{}, {"a": 1, "b": 2}, {"s": "x", "l": [1, 2.5, None]}, {"n": {"d": [True, "é"]}}, None]
BAD_ARGS: list[Any] = [
    {"a": NAN},
    {"a": INF},
    {"a": [1, -INF]},
    {"n": {"d": NAN}},
    {"s": {1, 2}},
    {"o": object()},
    {"b": b"bytes"},
    [1, 2],
    "a=1",
    5,
]
GOOD_NAMES = ["add", "lookup_2", "ns.tool"]
BAD_NAMES: list[Any] = ["", None, 5]


def test_fuzz_langchain_tool_call_arguments():
    from langchain_core.messages import AIMessage

    from l2reason.langchain.messages import to_message
    from l2reason.langchain.tool_calls import tool_call_text

    rng = random.Random(20263)
    for i in range(200):
        bad_args, bad_name = rng.random() < 0.5, rng.random() < 0.15
        args = rng.choice(BAD_ARGS if bad_args else GOOD_ARGS)
        name = rng.choice(BAD_NAMES if bad_name else GOOD_NAMES)
        c = {"name": name, "args": args, "id": f"c{i}"}
        bad = bad_args or bad_name

        def check(text: str, args: Any = args) -> None:
            body = text.split("\n")[1]
            assert json.loads(body, parse_constant=lambda s: 1 / 0)["arguments"] == (args or {}), text

        call(LC_ARGS, f"tool_call_text({c!r:.200})", lambda c=c: tool_call_text(c, 3), bad=bad, check=check)
        if i % 3 == 0 and isinstance(args, dict) and isinstance(name, str):

            def as_message(c: Any = c) -> Any:
                return to_message(AIMessage("", tool_calls=[c]), 1)

            def check_msg(m: Any, args: Any = args) -> None:
                assert m.role == "assistant" and m.content.startswith("<tool_call>"), m
                json.loads(m.content.split("\n")[1], parse_constant=lambda s: 1 / 0)

            call(LC_ARGS, f"to_message(AIMessage(tool_calls=[{c!r:.200}]))", as_message, bad=bad, check=check_msg)
    assert_clean(LC_ARGS, at_least=240)


BLOCK_GOOD = [
    ('{"name": "add", "arguments": {"a": 1, "b": 2}}', "add", {"a": 1, "b": 2}),
    ('{"name": "add", "arguments": "{\\"a\\": 3}"}', "add", {"a": 3}),
    ('{"name": "lookup", "parameters": {"key": "k"}}', "lookup", {"key": "k"}),
    ('{"name": "neg", "arguments": null}', "neg", {}),
]
BLOCK_BAD = [
    '{"name": "add", "arguments": {"a": NaN}}',
    '{"name": "add", "arguments": {"a": Infinity}}',
    '{"name": "add", "arguments": {"a": [1, -Infinity]}}',
    '{"name": "add", "arguments": "{\\"a\\": NaN}"}',
    '{"name": "add", "arguments": {"a": 1e999}}',
    '{"name": "add", "arguments": {"a": 1',
    '{"name": 5, "arguments": {}}',
    '{"arguments": {}}',
    "[1, 2]",
    "not json",
    '{"name": "add", "arguments": 59}',
    '{"name": "add", "arguments": {}} trailing',
]
FILLER = ["", "Let me compute.", "The answer is 25.", "x" * 40, "<tool_call>", "</tool_call>", "{", "}", "NaN"]


def test_fuzz_langchain_parsed_answers():
    """Answers the model writes: every block is a call (good JSON) or an invalid call (bad), never a crash."""
    from l2reason.langchain.tool_calls import parse_tool_calls

    rng = random.Random(20264)
    for _ in range(200):
        parts: list[str] = [rng.choice(FILLER[:4])]
        blocks: list[tuple[str, bool, Any]] = []
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.5:
                body, name, args = rng.choice(BLOCK_GOOD)
                blocks.append((name, True, args))
            else:
                body = rng.choice(BLOCK_BAD)
                blocks.append(("", False, None))
            parts.append(f"<tool_call>\n{body}\n</tool_call>")
            parts.append(rng.choice(FILLER[:4]))
        text = " ".join(parts)
        bad = not all(ok for _, ok, _ in blocks)
        want = [(n, a) for n, ok, a in blocks if ok]

        def check(out: Any, want: Any = want, n_bad: int = sum(not ok for _, ok, _ in blocks)) -> None:
            _, calls, invalid = out
            assert [(c["name"], c["args"]) for c in calls] == want, calls
            assert len(invalid) == n_bad, invalid

        # a bad block is this input's designed refusal: an InvalidToolCall, the good ones still calls
        def parse(text: str = text) -> Any:
            return parse_tool_calls(text, ["add", "lookup", "neg"])

        try:
            out = parse()
        except Exception as e:
            record(LC_PARSE, "crash", f"parse_tool_calls({text!r:.300}) -> {type(e).__name__}: {e}")
            continue
        try:
            check(out)
        except AssertionError as e:
            record(LC_PARSE, "silent" if bad else "wrong", f"parse_tool_calls({text!r:.300}) -> {e}")
            continue
        record(LC_PARSE, "clear" if bad else "ok")
    assert_clean(LC_PARSE, at_least=200)


# ---- intervention lists (request specs) ---------------------------------------------------------------------------

REQ = "request specs"
VEC = [0.05] * 32
ONE_OF_EACH: dict[str, list[dict[str, Any]]] = {
    "alrr": [{"kind": "alrr"}, {"kind": "alrr", "K": 2, "layers": [1, 2]}, {"kind": "alrr", "mode": "static"}],
    "erss": [{"kind": "erss", "M": 4, "S": 1}, {"kind": "erss", "layers": [2]}],
    "static_steer": [{"kind": "static_steer", "vectors": {1: VEC}}, {"kind": "static_steer", "vectors": {2: VEC}}],
    "suppress": [{"kind": "suppress"}, {"kind": "suppress", "target": "random", "rate": 0.5}],
}
SAE_SPECS = [
    {"kind": "sae_ablate", "sae": "a.safetensors", "layer": 1, "features": [1, 2]},
    {"kind": "sae_ablate", "sae": "a.safetensors", "layer": 2, "features": [0]},
    {"kind": "sae_ablate", "sae": "b.safetensors", "layer": 3, "features": [5]},
]
BAD_SPECS: list[Any] = [
    {"kind": "alrr", "layers": [9]},
    {"kind": "alrr", "layers": [1, 1]},
    {"kind": "alrr", "K": -1},
    {"kind": "erss", "S": 0},
    {"kind": "static_steer", "vectors": {1: VEC[:-1]}},
    {"kind": "static_steer", "vectors": {1: VEC, -3: VEC}},
    {"kind": "suppress", "rate": 2.0},
    {"kind": "sae_ablate", "sae": "../x", "layer": 1, "features": [1]},
    {"kind": "sae_ablate", "sae": "a.safetensors", "layer": 9, "features": [1]},
    {"kind": "nope"},
    5,
]


def _interventions(rng: random.Random, engine: bool) -> tuple[list[Any], bool]:
    kinds = [*ONE_OF_EACH, *(["sae_ablate"] if engine else [])]
    chosen = rng.sample(kinds, rng.randint(0, 3))
    ivs: list[Any] = []
    sae_layers: list[int] = []
    for k in chosen:
        spec = rng.choice(SAE_SPECS if k == "sae_ablate" else ONE_OF_EACH[k])
        ivs.append(spec)
        if k == "sae_ablate":
            sae_layers.append(spec["layer"])
    bad = False
    r = rng.random()
    if r < 0.3 and ivs:  # the same kind again (for sae_ablate: maybe on another layer, which is allowed)
        k = ivs[rng.randrange(len(ivs))]["kind"]
        extra = rng.choice(SAE_SPECS if k == "sae_ablate" else ONE_OF_EACH[k])
        ivs.insert(rng.randrange(len(ivs) + 1), extra)
        bad = k != "sae_ablate" or extra["layer"] in sae_layers
    elif r < 0.45:
        ivs.insert(rng.randrange(len(ivs) + 1), rng.choice(BAD_SPECS))
        bad = True
    return ivs, bad


def test_fuzz_request_intervention_lists(tiny_backend):
    import dataclasses

    from l2reason.backends.base import GenerationRequest, SamplingParams
    from l2reason.backends.validate import validate_request

    hf = tiny_backend.limits()
    caps = hf.capabilities.model_copy(update={"interventions": hf.capabilities.interventions | {"sae_ablate"}})
    engine = dataclasses.replace(hf, capabilities=caps, calibration=None)
    rng = random.Random(20265)
    ran = 0
    for i in range(360):
        use_engine = i % 3 == 0
        ivs, bad = _interventions(rng, use_engine)
        limits = engine if use_engine else hf

        def build(ivs: Any = ivs, limits: Any = limits) -> Any:
            req = GenerationRequest(prompt="hello w1", sampling=SamplingParams(max_new_tokens=2), interventions=ivs)
            return validate_request(req, limits)

        def check(req: Any, ivs: Any = ivs) -> None:
            assert [s.kind for s in req.interventions] == [s["kind"] for s in ivs]

        what = f"interventions {ivs!r:.300} ({'engine' if use_engine else 'hf'})"
        out = call(REQ, what, build, bad=bad, check=check)
        if out == "ok" and not use_engine and ivs and ran < 6:  # some good lists run: each kind reports
            ran += 1

            def run(ivs: Any = ivs) -> Any:
                return tiny_backend.generate(
                    GenerationRequest(prompt="hello w1", sampling=SamplingParams(max_new_tokens=2), interventions=ivs)
                )

            def reports(res: Any, ivs: Any = ivs) -> None:
                assert set(res.candidates[0].interventions) == {s["kind"] for s in ivs}, res.candidates[0]

            call(REQ, f"generate with {what}", run, bad=False, check=reports)
    assert ran >= 4
    assert_clean(REQ, at_least=360)


@pytest.mark.parametrize("kind", sorted(ONE_OF_EACH))
def test_a_repeated_intervention_kind_is_refused_before_any_model_work(tiny_backend, kind):
    from l2reason.backends.base import GenerationRequest

    ivs = ONE_OF_EACH[kind]
    req = GenerationRequest(prompt="hi", interventions=[ivs[0], ivs[-1]])
    with pytest.raises(ConfigError, match=f"{kind}.*more than once"):
        tiny_backend.generate(req)
