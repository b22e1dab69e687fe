"""ChatL2Reason: a real LangChain BaseChatModel on the tiny backend."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")

from langchain_core.messages import HumanMessage, SystemMessage

from l2reason.backends.base import GenerationRequest, Message, SamplingParams
from l2reason.integrations.langchain import ChatL2Reason


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
    from langchain_core.messages import AIMessage, ToolMessage

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
    from langchain_core.messages import AIMessage, ChatMessage

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

    with pytest.raises(ConfigError, match="does not take tools per call"):
        _sent(tiny_backend, "hello", tools=[{"name": "add"}])
    req, _ = _sent(tiny_backend, "hello", temperature=0.5, top_p=0.9, max_tokens=3, seed=7)
    s = req.sampling
    assert (s.temperature, s.top_p, s.max_new_tokens, s.seed) == (0.5, 0.9, 3, 7)
