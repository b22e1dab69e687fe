"""Upper bounds on everything in a request that sizes memory or time.

A request beyond one of these is a :class:`~l2reason.errors.ConfigError`
(or a pydantic ``ValidationError`` at construction) before any model work,
never a hang or an allocator crash. They are deliberately generous: each is
far above any setting the techniques need (``docs/guide.md``, "Errors and
limits", lists them with the reason for each). Checks that depend on the
loaded model (layer indices, hidden size, context length, vocabulary) are
made by :func:`l2reason.backends.validate.validate_request`.
"""

from __future__ import annotations

#: Candidates per request (``GenerationRequest.n``).
MAX_N = 256
#: Rows in one batched forward: the candidates of all requests batched together.
MAX_BATCH_ROWS = 2048
#: Generated tokens per candidate (also checked against the model's context length).
MAX_NEW_TOKENS = 131_072
#: Characters of one prompt or message text (the context-length check needs the tokens; this bounds tokenizing).
MAX_PROMPT_CHARS = 4_000_000
#: Stop strings per request, and characters per stop string.
MAX_STOP = 64
MAX_STOP_CHARS = 1_000
#: Top log-probabilities per token.
MAX_LOGPROBS = 50
#: ALRR extra passes per layer and token (the paper uses 1).
MAX_ALRR_K = 16
#: ERSS memory-bank size (the paper uses 32).
MAX_BANK = 4096
#: Warm-ups, streaks and cooldowns, in decode steps.
MAX_STEPS = 1_000_000
#: Seeds: non-negative and below 2**63 (they feed torch and numpy generators).
MAX_SEED = 2**63 - 1
#: Any float a request carries that multiplies a hidden state (thresholds, steering scales, vector entries).
MAX_ABS_VALUE = 1e30
#: The massive-activation factor (norm > factor x layer median is masked).
MAX_MASSIVE_FACTOR = 1e6
#: Decoder layers: no model we know has more; bounds layer indices and per-layer lists (vectors, layer sets).
MAX_LAYERS = 1024
#: Values in one steering vector (no model we know has a larger hidden size).
MAX_HIDDEN = 65_536
#: Interventions in one request.
MAX_INTERVENTIONS = 64
#: SAE features one ``sae_ablate`` spec removes.
MAX_SAE_FEATURES = 4096
#: Characters of an SAE file's name (``sae_ablate``'s ``sae``, resolved in the server's ``--sae-dir``).
MAX_SAE_NAME_CHARS = 255
#: Bytes of one SAE file an engine plugin reads (a 16384 x 131072 float32 SAE is 16 GiB; 8 GiB covers the
#: SAEs published for models up to ~8B parameters at 64k features).
MAX_SAE_FILE_BYTES = 8 * 1024**3
#: Characters of one request's l2reason settings JSON as it reaches an engine plugin (checked before it is
#: parsed; all static-steering vectors of an 8192-wide, 80-layer model take about 13 MB).
MAX_SETTINGS_CHARS = 16 * 1024**2
#: Bytes of hidden states one call may collect (``GenerationRequest.collect``), counted at the worst case
#: (every candidate runs to ``max_new_tokens``): rows x steps x layers x hidden size x bytes per value.
MAX_COLLECT_BYTES = 2 * 1024**3

__all__ = [
    "MAX_ABS_VALUE",
    "MAX_ALRR_K",
    "MAX_BANK",
    "MAX_BATCH_ROWS",
    "MAX_COLLECT_BYTES",
    "MAX_HIDDEN",
    "MAX_INTERVENTIONS",
    "MAX_LAYERS",
    "MAX_LOGPROBS",
    "MAX_MASSIVE_FACTOR",
    "MAX_N",
    "MAX_NEW_TOKENS",
    "MAX_PROMPT_CHARS",
    "MAX_SAE_FEATURES",
    "MAX_SAE_FILE_BYTES",
    "MAX_SAE_NAME_CHARS",
    "MAX_SEED",
    "MAX_SETTINGS_CHARS",
    "MAX_STEPS",
    "MAX_STOP",
    "MAX_STOP_CHARS",
]
