"""Helpers for the DSPy tests on the tiny random model (not a test module)."""

from __future__ import annotations

import hashlib
import typing

import dspy


class LenientAdapter(dspy.ChatAdapter):
    """ChatAdapter whose parser accepts any text (the tiny random model writes gibberish).

    Formatting, the LM call, metadata, caching and history are DSPy's own; only
    parsing is lenient: a ``str`` field gets the whole completion, a ``Literal``
    field an option chosen by a hash of the completion, a ``dict`` field ``{}``.
    """

    def parse(self, signature, completion):
        out = {}
        h = int.from_bytes(hashlib.blake2b(completion.encode(), digest_size=4).digest(), "little")
        for name, f in signature.output_fields.items():
            ann = f.annotation
            if typing.get_origin(ann) is typing.Literal:
                opts = typing.get_args(ann)
                out[name] = opts[h % len(opts)]
            elif ann is dict or typing.get_origin(ann) is dict:
                out[name] = {}
            else:
                out[name] = completion
        return out
