"""Deprecated alias of :mod:`l2reason.langchain` (kept for one release; removed in the next).

``from l2reason.integrations.langchain import ChatL2Reason`` still works and
gives the same objects as ``from l2reason.langchain import ChatL2Reason``, with
a :class:`DeprecationWarning` naming the new path.
"""

from __future__ import annotations

import warnings

from l2reason.langchain import ChatL2Reason, StructuredOutputError, parse_tool_calls

__all__ = ["ChatL2Reason", "StructuredOutputError", "parse_tool_calls"]

warnings.warn(
    "l2reason.integrations.langchain is deprecated and will be removed in the next release: "
    "import from l2reason.langchain instead (from l2reason.langchain import ChatL2Reason)",
    DeprecationWarning,
    stacklevel=2,
)
