"""The package SGLang scans (``SGLANG_EXTERNAL_MODEL_PACKAGE=l2reason_sglang.models``).

SGLang imports each leaf module here and only *logs* an import error, then
silently serves its built-in model instead. So this package imports its leaf
itself: a broken plugin fails the server's start-up loudly.
"""

from l2reason_sglang.models import causal_lm  # noqa: F401  (fail loudly, see above)
