"""The SGLang runtime: a client backend for a server started with the l2reason plugin, and its launcher.

``SGLangBackend`` implements the same protocol as the embedded ``HFBackend``;
``l2reason serve`` (:mod:`l2reason.backends.sglang.server`) starts a server.
Neither imports SGLang: the server runs in SGLang's own environment.
"""

from l2reason.backends.sglang.client import SGLangBackend, parse_url

__all__ = ["SGLangBackend", "parse_url"]
