"""ChatL2Reason: a real LangChain BaseChatModel on the tiny backend."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from pydantic import BaseModel

pytest.importorskip("langchain_core")

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from l2reason.backends.base import GenerationRequest, Message, SamplingParams
from l2reason.backends.hf import HFBackend
from l2reason.langchain import ChatL2Reason, StructuredOutputError, parse_tool_calls


def test_invoke_matches_backend_and_carries_norms(tiny_backend):
    llm = ChatL2Reason(backend=tiny_backend, max_tokens=6)
    msg = llm.invoke([SystemMessage("be brief"), HumanMessage("hello w1")])
    direct = tiny_backend.generate(
        GenerationRequest(
            messages=[Message(role="system", content="be brief"), Message(role="user", content="hello w1")],
            sampling=SamplingParams(max_new_tokens=6),
        )
    )
    assert msg.content == direct.text
    meta = msg.response_metadata["l2reason"]
    assert meta["layers"] == direct.candidates[0].norms.layers
    assert meta["mean_norm"] == pytest.approx(direct.candidates[0].norms.mean)
    assert msg.usage_metadata["output_tokens"] == direct.completion_tokens


def test_selection_and_all_candidates(tiny_backend):
    llm = ChatL2Reason(backend=tiny_backend, max_tokens=6, n=3, temperature=1.0, selection="l2")
    res = llm.generate([[HumanMessage("hello")]])
    gens = res.generations[0]
    assert len(gens) == 1
    info = gens[0].generation_info["l2reason"]
    assert len(info["candidates"]) == 3 and info["selection"]["method"] == "l2"
    assert info["index"] == info["selection"]["index"]  # the returned generation is the chosen candidate
    plain = ChatL2Reason(backend=tiny_backend, max_tokens=6, n=3, temperature=1.0)
    assert len(plain.generate([[HumanMessage("hello")]]).generations[0]) == 3


def test_interventions_pass_through(tiny_backend):
    llm = ChatL2Reason(
        backend=tiny_backend, max_tokens=6, interventions=[{"kind": "alrr", "mode": "static", "layers": [1]}]
    )
    msg = llm.invoke("hello")
    rep = msg.response_metadata["l2reason"]["interventions"]["alrr"]
    assert rep["decode_steps"] > 0 and rep["passes_accepted"] == [rep["decode_steps"]]


# ---- issue 11, rule 8: behaves like a LangChain chat model


class Recorder:
    """The tiny backend, keeping the last request it was given."""

    def __init__(self, inner):
        self.inner, self.request = inner, None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, req):
        self.request = req
        return self.inner.generate(req)


def _sent(tiny_backend, messages, **kw):
    rec = Recorder(tiny_backend)
    msg = ChatL2Reason(backend=rec, max_tokens=4).invoke(messages, **kw)
    return rec.request, msg


def test_list_content_is_joined_as_text(tiny_backend):
    req, msg = _sent(tiny_backend, [HumanMessage([{"type": "text", "text": "hello "}, "w1"])])
    assert [(m.role, m.content) for m in req.messages] == [("user", "hello w1")]
    _, plain = _sent(tiny_backend, [HumanMessage("hello w1")])
    assert msg.content == plain.content  # the same prompt as string content


@pytest.mark.parametrize(
    ("part", "kind"),
    [
        ({"type": "image_url", "image_url": {"url": "https://x/cat.png"}}, "'image_url'"),
        ({"type": "image", "url": "https://x/cat.png"}, "'image'"),
        ({"type": "text"}, "'text'"),  # a text part without text
        ({"no_type": 1}, "dict (no 'type' key)"),
    ],
)
def test_unsupported_content_parts_raise(tiny_backend, part, kind):
    from l2reason.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        _sent(tiny_backend, [HumanMessage([{"type": "text", "text": "what is this?"}, part])])
    assert f"message 0 (HumanMessage) has a content part of type {kind} at position 1" in str(err.value)
    assert "text only" in str(err.value)


def test_stop_string_is_one_stop_string(tiny_backend):
    req, _ = _sent(tiny_backend, "hello", stop="STOP")
    assert req.sampling.stop == ["STOP"]
    req, _ = _sent(tiny_backend, "hello", stop=["STOP", "w5"])
    assert req.sampling.stop == ["STOP", "w5"]
    req, _ = _sent(tiny_backend, "hello")
    assert req.sampling.stop == []
    from l2reason.errors import ConfigError

    with pytest.raises(ConfigError, match="stop must be a string or a list of strings, got 5"):
        _sent(tiny_backend, "hello", stop=5)


def test_tool_calls_in_history_are_rendered_and_tool_messages_kept(tiny_backend):
    from langchain_core.messages import ToolMessage

    history = [
        HumanMessage("add 1 and 2"),
        AIMessage("let me add", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}]),
        ToolMessage("3", tool_call_id="c1"),
        AIMessage(
            [
                {"type": "text", "text": "and"},
                {"type": "tool_use", "name": "mul", "input": {"a": 3}, "id": "c2"},
            ]
        ),
        AIMessage("", tool_calls=[{"name": "neg", "args": {}, "id": "c3"}]),
    ]
    req, _ = _sent(tiny_backend, history)
    assert [m.role for m in req.messages] == ["user", "assistant", "tool", "assistant", "assistant"]
    assert (
        req.messages[1].content
        == 'let me add\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    )
    assert req.messages[2].content == "3"
    assert req.messages[3].content == 'and\n<tool_call>\n{"name": "mul", "arguments": {"a": 3}}\n</tool_call>'
    assert req.messages[4].content == '<tool_call>\n{"name": "neg", "arguments": {}}\n</tool_call>'


def test_invalid_tool_calls_and_unknown_roles_raise(tiny_backend):
    from langchain_core.messages import ChatMessage

    from l2reason.errors import ConfigError

    bad = AIMessage("x", invalid_tool_calls=[{"name": "add", "args": "{oops", "id": "c1", "error": "bad json"}])
    with pytest.raises(ConfigError, match=r"message 1 \(AIMessage\) holds invalid tool calls \['add'\]"):
        _sent(tiny_backend, [HumanMessage("hi"), bad])
    with pytest.raises(ConfigError, match="unsupported ChatMessage role 'function'"):
        _sent(tiny_backend, [ChatMessage(role="function", content="x")])
    req, _ = _sent(tiny_backend, [ChatMessage(role="human", content="hello")])
    assert req.messages[0].role == "user"


def test_wrong_backend_type_fails_at_construction(tiny_backend):
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="backend must be an l2reason backend object"):
        ChatL2Reason(backend=42)
    with pytest.raises(pydantic.ValidationError, match="to load a model by name pass model='default'"):
        ChatL2Reason(backend="default")
    assert ChatL2Reason(backend=tiny_backend).backend is tiny_backend


def test_unknown_call_kwargs_raise_and_known_ones_apply(tiny_backend):
    from l2reason.errors import ConfigError

    with pytest.raises(ConfigError, match="does not take response_format per call"):
        _sent(tiny_backend, "hello", response_format={"type": "json_object"})
    req, _ = _sent(tiny_backend, "hello", temperature=0.5, top_p=0.9, max_tokens=3, seed=7)
    s = req.sampling
    assert (s.temperature, s.top_p, s.max_new_tokens, s.seed) == (0.5, 0.9, 3, 7)


# ---- issue 12: async, batches in one backend call, tools, structured output, usage


PROMPTS = ["hello w1", "w5 w6 w7", "world w9 ?"]


class CountingHF(HFBackend):
    """The real transformers backend on the tiny model, counting its backend calls and their threads."""

    def __init__(self, tiny):
        super().__init__(tiny)
        self.calls: list[int] = []  # requests per generate_many call (generate goes through it too)
        self.threads: list[int] = []

    def generate_many(self, requests):
        self.calls.append(len(requests))
        self.threads.append(threading.get_ident())
        return super().generate_many(requests)


class Scripted(HFBackend):
    """The real backend, whose chosen candidate's text is replaced by a known answer: the tiny model
    writes no tool calls, so this is how the whole path from prompt to parsed object is exercised."""

    def __init__(self, tiny, answer):
        super().__init__(tiny)
        self.answer, self.requests = answer, []

    def generate_many(self, requests):
        self.requests += list(requests)
        out = super().generate_many(requests)
        return [
            r.model_copy(update={"candidates": [c.model_copy(update={"text": self.answer}) for c in r.candidates]})
            for r in out
        ]


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Answer(BaseModel):
    """The final answer."""

    value: int
    unit: str = ""


def test_batch_of_three_is_one_backend_call_and_equals_invoke(tiny):
    be = CountingHF(tiny)
    llm = ChatL2Reason(backend=be, max_tokens=6)
    singles = [llm.invoke(p) for p in PROMPTS]
    assert be.calls == [1, 1, 1]
    be.calls.clear()
    batched = llm.batch(PROMPTS)
    assert be.calls == [3]  # one generate_many with all three requests
    assert [m.content for m in batched] == [m.content for m in singles]
    assert len({m.content for m in singles}) > 1  # the inputs really differ
    for b, s in zip(batched, singles):
        assert b.usage_metadata == s.usage_metadata
        assert b.response_metadata["l2reason"]["mean_norm"] == pytest.approx(
            s.response_metadata["l2reason"]["mean_norm"]
        )


def test_abatch_is_one_backend_call_off_the_event_loop(tiny):
    be = CountingHF(tiny)
    llm = ChatL2Reason(backend=be, max_tokens=6)
    singles = [llm.invoke(p).content for p in PROMPTS]
    be.calls.clear()
    be.threads.clear()

    async def main():
        return threading.get_ident(), await llm.abatch(PROMPTS)

    loop_thread, out = asyncio.run(main())
    assert be.calls == [3]
    assert [m.content for m in out] == singles
    assert be.threads and loop_thread not in be.threads  # the forward passes ran in a worker thread


def test_ainvoke_runs_in_a_worker_thread_and_concurrent_calls_are_safe(tiny):
    be = CountingHF(tiny)
    llm = ChatL2Reason(backend=be, max_tokens=6)
    singles = [llm.invoke(p).content for p in PROMPTS]
    be.threads.clear()

    async def main():
        one = await llm.ainvoke(PROMPTS[0])
        many = await asyncio.gather(*(llm.ainvoke(p) for p in PROMPTS))
        return threading.get_ident(), one, many

    loop_thread, one, many = asyncio.run(main())
    assert one.content == singles[0]
    assert [m.content for m in many] == singles
    assert len(be.threads) == 4 and loop_thread not in be.threads


def test_batch_chunks_by_max_concurrency_and_keeps_errors_per_input(tiny):
    from l2reason.errors import ConfigError

    be = CountingHF(tiny)
    llm = ChatL2Reason(backend=be, max_tokens=4)
    out = llm.batch(PROMPTS, config={"max_concurrency": 2})
    assert be.calls == [2, 1] and len(out) == 3
    be.calls.clear()
    bad = [PROMPTS[0], [HumanMessage([{"type": "image", "url": "x"}])], PROMPTS[1]]
    got = llm.batch(bad, return_exceptions=True)
    assert isinstance(got[1], ConfigError) and "text only" in str(got[1])
    assert [got[0].content, got[2].content] == [m.content for m in llm.batch([PROMPTS[0], PROMPTS[1]])]
    assert be.calls[0] == 2  # the two good inputs went in one call; the bad one never reached the backend


def test_generate_with_several_prompts_and_bound_tools_batch(tiny):
    be = CountingHF(tiny)
    llm = ChatL2Reason(backend=be, max_tokens=4)
    res = llm.generate([[HumanMessage(p)] for p in PROMPTS])
    assert be.calls == [3] and len(res.generations) == 3
    be.calls.clear()
    out = llm.bind_tools([add]).batch(PROMPTS)  # a RunnableBinding batches through ChatL2Reason.batch
    assert be.calls == [3] and all(isinstance(m.tool_calls, list) for m in out)


def test_usage_metadata_on_every_message(tiny_backend):
    llm = ChatL2Reason(backend=tiny_backend, max_tokens=5, n=3, temperature=1.0)
    gens = llm.generate([[HumanMessage("hello w1")]]).generations[0]
    assert len(gens) == 3
    total_out = sum(g.message.response_metadata["l2reason"]["completion_tokens"] for g in gens)
    for g in gens:
        u = g.message.usage_metadata
        assert u["output_tokens"] == total_out and u["input_tokens"] > 0
        assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"]
    msg = ChatL2Reason(backend=tiny_backend, max_tokens=5).bind_tools([add]).invoke("hello w1")
    assert (
        msg.usage_metadata["total_tokens"] == msg.usage_metadata["input_tokens"] + msg.usage_metadata["output_tokens"]
    )
    assert msg.response_metadata["l2reason"]["layers"]  # the ℓ2 summary is kept with tools too


# ---- parsing known texts


def test_parse_qwen_tool_call_blocks():
    text = (
        'Let me compute.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
        '<tool_call>\n{"name": "mul", "arguments": "{\\"a\\": 3}"}\n</tool_call>'
    )
    content, calls, bad = parse_tool_calls(text)
    assert content == "Let me compute."
    assert [(c["name"], c["args"]) for c in calls] == [("add", {"a": 1, "b": 2}), ("mul", {"a": 3})]
    assert bad == []
    ids = [c["id"] for c in calls]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2
    assert all(c["type"] == "tool_call" for c in calls)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ('{"name": "add", "arguments": {"a": 1,}}', "not JSON"),
        ('{"arguments": {"a": 1}}', "no 'name'"),
        ('{"name": "add", "arguments": [1, 2]}', "must be a JSON object"),
        ('{"name": "add", "arguments": {}} trailing', "text after the JSON object"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_parse_invalid_tool_calls(body, error):
    content, calls, bad = parse_tool_calls(f"x <tool_call>{body}</tool_call> y")
    assert calls == [] and content == "x  y"
    assert len(bad) == 1 and error in bad[0]["error"] and bad[0]["args"] == body
    assert bad[0]["id"].startswith("call_")
    assert bad[0]["name"] == ("add" if '"name": "add"' in body else None)


def test_parse_unclosed_last_block_and_plain_text():
    content, calls, bad = parse_tool_calls('<tool_call>\n{"name": "add", "arguments": {"a": 1}}')
    assert (content, [c["args"] for c in calls], bad) == ("", [{"a": 1}], [])
    content, calls, bad = parse_tool_calls('<tool_call>\n{"name": "add", "arguments": {"a"')  # cut by the limit
    assert calls == [] and bad[0]["name"] == "add" and "not JSON" in bad[0]["error"]
    assert parse_tool_calls("The answer is 25.") == ("The answer is 25.", [], [])


def test_parse_untagged_json_only_for_bound_tools():
    fenced = 'Sure:\n```json\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n```\ndone'
    content, calls, _ = parse_tool_calls(fenced, ["add"])
    assert content == "Sure:\n\ndone" and calls[0]["args"] == {"a": 2, "b": 3}
    assert parse_tool_calls(fenced)[1] == []  # without names: plain text
    assert parse_tool_calls(fenced, ["mul"])[1] == []  # not a bound tool: plain text
    content, calls, _ = parse_tool_calls('{"name": "add", "arguments": {"a": 1}}', ["add"])
    assert content == "" and calls[0]["name"] == "add"
    text = '{"name": "x", "value": 1}'
    assert parse_tool_calls(text, ["add"]) == (text, [], [])
    two = '{"name": "add", "arguments": {"a": 1}}\n{"name": "add", "arguments": {"a": 2}}'
    assert [c["args"] for c in parse_tool_calls(two, ["add"])[1]] == [{"a": 1}, {"a": 2}]
    cut = '{"name": "add", "arguments": {"a": 1}}\n{"name": "ad'  # the second one cut by the token limit
    assert parse_tool_calls(cut, ["add"]) == (cut, [], [])


# ---- tools end to end on the tiny model


def test_bind_tools_renders_definitions_and_parses_the_answer(tiny):
    answer = 'I will add.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    be = Scripted(tiny, answer)
    llm = ChatL2Reason(backend=be, max_tokens=4)
    msg = llm.bind_tools([add]).invoke("hello w1")
    req = be.requests[-1]
    assert req.messages is None and req.prompt is not None  # rendered here, sent as raw text
    assert '"name": "add"' in req.prompt and "<tools>" in req.prompt and "Add two integers." in req.prompt
    assert req.prompt.rstrip().endswith("assistant")  # the tiny template's generation prompt, nothing forced
    assert msg.content == "I will add."
    assert msg.tool_calls == [
        {"name": "add", "args": {"a": 2, "b": 3}, "id": msg.tool_calls[0]["id"], "type": "tool_call"}
    ]
    assert msg.response_metadata["l2reason"]["raw_text"] == answer
    # the call and its result go back into the next prompt
    history = [
        HumanMessage("hello w1"),
        msg,
        ToolMessage("5", tool_call_id=msg.tool_calls[0]["id"]),
    ]
    llm.bind_tools([add]).invoke(history)
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>' in be.requests[-1].prompt
    assert "tool 5" in be.requests[-1].prompt


def test_tool_choice_forces_the_call_by_prefix(tiny):
    be = Scripted(tiny, ' "a": 2, "b": 3}}\n</tool_call>')
    llm = ChatL2Reason(backend=be, max_tokens=4)
    msg = llm.bind_tools([add], tool_choice="add").invoke("hello w1")
    assert be.requests[-1].prompt.endswith('<tool_call>\n{"name": "add", "arguments": {')
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("add", {"a": 2, "b": 3})]
    for choice in ("any", "required", True, {"type": "function", "function": {"name": "add"}}):
        llm.bind_tools([add], tool_choice=choice).invoke("hello w1")
        assert be.requests[-1].prompt.endswith('"arguments": {')  # one tool: its name is forced
    llm.bind_tools([add, Answer], tool_choice="any").invoke("hello w1")
    assert be.requests[-1].prompt.endswith('<tool_call>\n{"name": "')  # several: the model picks the name
    msg = llm.bind_tools([add], tool_choice="none").invoke("hello w1")
    assert be.requests[-1].messages is not None and msg.tool_calls == []  # tools not shown, nothing parsed


def test_tool_choice_errors():
    from l2reason.errors import ConfigError

    llm = ChatL2Reason(backend=HFBackendLike())
    with pytest.raises(ConfigError, match="tool_choice names 'mul', which is not a bound tool \\(add\\)"):
        llm.bind_tools([add], tool_choice="mul")
    with pytest.raises(ConfigError, match="unsupported tool_choice 5"):
        llm.bind_tools([add], tool_choice=5)
    with pytest.raises(ConfigError, match="needs tools"):
        llm.bind_tools([], tool_choice="any")
    with pytest.raises(ConfigError, match="tool names must be unique; repeated: add"):
        llm.bind_tools([add, add])
    with pytest.raises(ConfigError, match="tool 0 .* is not a tool definition"):
        llm.bind_tools([42])


class HFBackendLike:
    """Just enough of a backend to build a model (the calls above fail before generating)."""

    def generate(self, req):  # pragma: no cover - never reached
        raise AssertionError


def test_native_tools_template_gets_tools(tiny):
    from conftest import _tiny_tokenizer

    from l2reason.backends.base import Message as M
    from l2reason.langchain.tools import openai_tools as _openai_tools
    from l2reason.langchain.tools import render_prompt as _render_prompt

    tok = _tiny_tokenizer()
    tok.chat_template = (
        "{% if tools %}system TOOLS{% for t in tools %} {{ t['function']['name'] }}{% endfor %} {% endif %}"
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant {% endif %}"
    )
    text = _render_prompt(tok, [M(role="user", content="hello")], _openai_tools([add]), "")
    assert text == "system TOOLS add user hello assistant "
    tok.chat_template = None  # no template: role lines, the tools as a system line
    text = _render_prompt(tok, [M(role="user", content="hello")], _openai_tools([add]), "<tool_call>")
    assert text.startswith("system: # Tools") and text.endswith("user: hello\nassistant: <tool_call>")


# ---- structured output


def test_structured_output_pydantic_and_json_schema(tiny):
    be = Scripted(tiny, ' "value": 42, "unit": "cm"}}\n</tool_call>')
    llm = ChatL2Reason(backend=be, max_tokens=4)
    assert llm.with_structured_output(Answer).invoke("hello w1") == Answer(value=42, unit="cm")
    assert be.requests[-1].prompt.endswith('<tool_call>\n{"name": "Answer", "arguments": {')
    schema = {"title": "answer", "type": "object", "properties": {"value": {"type": "integer"}}, "required": ["value"]}
    assert llm.with_structured_output(schema).invoke("hello w1") == {"value": 42, "unit": "cm"}
    out = llm.with_structured_output(Answer, include_raw=True).invoke("hello w1")
    assert out["parsed"] == Answer(value=42, unit="cm") and out["parsing_error"] is None
    assert out["raw"].tool_calls[0]["name"] == "Answer"
    assert llm.with_structured_output(Answer).batch(PROMPTS) == [Answer(value=42, unit="cm")] * 3


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (' "value": "many"}}</tool_call>', "do not fit the schema"),
        (' "value": 4', "does not parse"),  # cut by the token limit
    ],
)
def test_structured_output_errors(tiny, answer, why):
    from langchain_core.exceptions import OutputParserException

    from l2reason.errors import L2ReasonError

    llm = ChatL2Reason(backend=Scripted(tiny, answer), max_tokens=4)
    with pytest.raises(StructuredOutputError, match=why) as err:
        llm.with_structured_output(Answer).invoke("hello w1")
    assert isinstance(err.value, L2ReasonError) and isinstance(err.value, OutputParserException)
    assert err.value.llm_output.startswith('<tool_call>\n{"name": "Answer"')
    out = llm.with_structured_output(Answer, include_raw=True).invoke("hello w1")
    assert out["parsed"] is None and isinstance(out["parsing_error"], StructuredOutputError)


def test_structured_output_on_the_tiny_model_fails_clearly(tiny_backend):
    llm = ChatL2Reason(backend=tiny_backend, max_tokens=4)
    with pytest.raises(StructuredOutputError, match="not a 'Answer' object"):
        llm.with_structured_output(Answer).invoke("hello w1")  # random weights write no JSON
    missing = {"title": "t", "type": "object", "properties": {"v": {"type": "integer"}}, "required": ["v"]}

    from l2reason.langchain.structured import parse_structured as _parse_structured

    msg = AIMessage("", tool_calls=[{"name": "t", "args": {"w": 1}, "id": "c"}])
    with pytest.raises(StructuredOutputError, match=r"lack required keys \['v'\]"):
        _parse_structured(msg, missing, "t")
    with pytest.raises(StructuredOutputError, match="it called no 't' tool"):
        _parse_structured(AIMessage("just text"), missing, "t")


def test_structured_output_options():
    from l2reason.errors import ConfigError

    llm = ChatL2Reason(backend=HFBackendLike())
    with pytest.raises(ConfigError, match="method='json_mode' is not supported"):
        llm.with_structured_output(Answer, method="json_mode")
    with pytest.raises(ConfigError, match="does not take foo"):
        llm.with_structured_output(Answer, foo=1)
    assert json.dumps(Answer.model_json_schema())  # the schema itself is plain JSON


def test_old_import_path_warns_and_gives_the_same_objects():
    import importlib
    import sys

    import l2reason.langchain as new

    sys.modules.pop("l2reason.integrations.langchain", None)
    with pytest.warns(DeprecationWarning, match=r"import from l2reason\.langchain"):
        old = importlib.import_module("l2reason.integrations.langchain")
    assert (old.ChatL2Reason, old.StructuredOutputError, old.parse_tool_calls) == (
        new.ChatL2Reason,
        new.StructuredOutputError,
        new.parse_tool_calls,
    )


def test_the_adapter_package_does_not_shadow_langchain():
    """``l2reason/langchain`` is named after the framework; its absolute imports reach the real packages."""
    from pathlib import Path

    import langchain
    import langchain_core

    import l2reason.langchain

    ours = Path(l2reason.langchain.__file__).resolve().parents[1]  # the l2reason package folder
    for real in (langchain, langchain_core):
        assert not Path(real.__file__ or "").resolve().is_relative_to(ours), real.__file__
    assert l2reason.langchain.__name__ == "l2reason.langchain"
