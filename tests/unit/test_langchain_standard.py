"""LangChain's standard conformance tests (``langchain-tests``) for ``ChatL2Reason``.

``ChatModelUnitTests`` check construction, ``bind_tools``, ``with_structured_output`` and the tracing
parameters without generating. ``ChatModelIntegrationTests`` call the model: here on a tiny random model
built in the test (``conftest.make_tiny``, 4 layers x 32), so they run offline in seconds. A random model
writes random words, so the tests that need a model that understands the prompt (call the right tool with the
right arguments, fill a schema, stop on a word it was asked to write) are marked ``xfail`` with that reason;
the real-model tests (``tests/integration/test_langchain_real.py``) cover tool calls and structured output on
the packaged model.

Every capability the suite asks about is answered by a property below, with the reason; the suite itself
checks that no standard test is overridden except as ``xfail`` with a reason.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import pytest

pytest.importorskip("langchain_tests")

from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from l2reason.errors import ConfigError
from l2reason.langchain import ChatL2Reason

_RANDOM = "a tiny random model writes random words, not "


@functools.cache
def _tiny_backend() -> Any:
    """One tiny random model for the whole module (properties cannot take pytest fixtures)."""
    from conftest import make_tiny

    from l2reason.backends.hf import HFBackend

    return HFBackend(make_tiny(seed=5))  # seed 5: its greedy answers start with words, not EOS


class _Capabilities:
    """What ChatL2Reason supports, as the standard suites ask it (shared by the unit and integration classes)."""

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatL2Reason

    @property
    def has_tool_choice(self) -> bool:
        return True  # "auto", "none", "any"/"required", a tool name (forced by prefilling the assistant turn)

    @property
    def tool_choice_value(self) -> str | None:
        return "any"  # forcing a call makes the tool tests depend on the arguments only

    @property
    def structured_output_kwargs(self) -> dict[str, Any]:
        return {"method": "function_calling"}  # the only method: a forced tool call (docs/langchain.md)

    @property
    def supports_json_mode(self) -> bool:
        return False  # no JSON mode: structured output is a forced tool call

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False  # Anthropic-style tool_use parts are read, but its image/document parts are not text

    @property
    def returns_usage_metadata(self) -> bool:
        return True  # on every message and on the last streamed chunk

    @property
    def supports_model_override(self) -> bool:
        # The model is loaded once per ChatL2Reason (or given as a backend object); a per-call `model=` would
        # load another model inside a call. Use another ChatL2Reason instead: a per-call `model` is a ConfigError.
        return False

    @property
    def enable_vcr_tests(self) -> bool:
        return False  # VCR records HTTP traffic; the embedded backend makes none


# Text only: the packaged models read text, and any other content part raises ConfigError (docs/langchain.md).
for _name in (
    "supports_image_inputs",
    "supports_image_urls",
    "supports_pdf_inputs",
    "supports_audio_inputs",
    "supports_video_inputs",
    "supports_image_tool_message",
    "supports_pdf_tool_message",
):
    setattr(_Capabilities, _name, property(lambda self: False))


class TestChatL2ReasonUnit(_Capabilities, ChatModelUnitTests):
    """The standard unit tests: no generation, nothing loaded (``model`` is a spec, loaded at the first call)."""

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "fast"}

    # test_serdes is skipped by the suite ("Model is not serializable"): a ChatL2Reason may hold a backend object
    # (a loaded model), which has no serialized form, so ChatL2Reason.is_lc_serializable() stays False.

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return {}, {}, {}  # nothing comes from the environment: a local model needs no key or URL


class TestChatL2ReasonIntegration(_Capabilities, ChatModelIntegrationTests):
    """The standard integration tests on a tiny random model (greedy, 8 new tokens)."""

    # The suite's async tests carry no asyncio mark (LangChain's own projects run pytest-asyncio in auto mode):
    # mark the class; pytest-asyncio then warns about each sync test, which is expected here.
    pytestmark = [
        pytest.mark.asyncio,
        pytest.mark.filterwarnings("ignore:The test <Function .* is not an async function:pytest.PytestWarning"),
    ]

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"backend": _tiny_backend(), "max_tokens": 8}


def _expected_failure(suite: type, name: str, reason: str, raises: type[BaseException] | None = None) -> Any:
    """Standard test ``name`` of ``suite`` marked ``xfail(reason, strict=True)``: the suite allows overriding a
    standard test only this way. The wrapper keeps the test's signature and parametrization (``functools.wraps``)."""
    base = getattr(suite, name)
    if inspect.iscoroutinefunction(base):

        @functools.wraps(base)
        async def test(self: Any, *args: Any, **kwargs: Any) -> None:
            await base(self, *args, **kwargs)

    else:

        @functools.wraps(base)
        def test(self: Any, *args: Any, **kwargs: Any) -> None:
            base(self, *args, **kwargs)

    return pytest.mark.xfail(reason=reason, raises=raises, strict=True)(test)


# Refused on purpose (a ConfigError that says what to do instead).
_REFUSED = {
    "test_bind_tool_pydantic": "bind_tools refuses two tools of one name (here PersonA as a pydantic class and as "
    "its JSON schema, which convert to different definitions): the model's call names only the tool, so it would "
    "be ambiguous",
    "test_with_structured_output": "with_structured_output supports method='function_calling' only (a forced tool "
    "call); 'json_schema' and 'json_mode' are a ConfigError (docs/langchain.md, 'Structured output')",
}
for _name, _why in _REFUSED.items():
    setattr(TestChatL2ReasonUnit, _name, _expected_failure(ChatModelUnitTests, _name, _why, raises=ConfigError))

# What a model must understand to pass; the real-model tests cover these on the packaged model.
_NEEDS_A_REAL_MODEL = {
    "test_tool_calling": "a call of magic_function with the input the question names",
    "test_tool_calling_async": "a call of magic_function with the input the question names",
    "test_bind_runnables_as_tools": "a tool call with valid JSON arguments",
    "test_tool_choice": "a forced tool call with valid JSON arguments",
    "test_tool_calling_with_no_arguments": "a forced call with an empty JSON object",
    "test_structured_output": "a Joke object (valid JSON in the forced call)",
    "test_structured_output_async": "a Joke object (valid JSON in the forced call)",
    "test_structured_output_pydantic_2_v1": "a Joke object (valid JSON in the forced call)",
    "test_structured_output_optional_param": "a Joke object (valid JSON in the forced call)",
    "test_agent_loop": "a call of the weather tool, then an answer",
    "test_unicode_tool_call_integration": "a tool call that keeps the unicode of the question",
}
for _name, _what in _NEEDS_A_REAL_MODEL.items():
    setattr(TestChatL2ReasonIntegration, _name, _expected_failure(ChatModelIntegrationTests, _name, _RANDOM + _what))
