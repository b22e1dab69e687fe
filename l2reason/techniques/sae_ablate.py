"""Removing SAE features from the residual stream: the math every backend shares, on plain tensors.

An SAE's feature ``i`` contributes ``f_i(x)·d_i`` to its reconstruction of a
state ``x``. Ablating a set ``S`` of features replaces ``x`` by
``x − Σ_{i∈S} f_i(x)·d_i``: the features are gone, everything the SAE does
not explain (its error term) stays.

:class:`SAEWeights` holds an SAE as four tensors and an activation rule, with
SAELens' conventions folded in (``apply_b_dec_to_input``; a TopK SAE's
``rescale_acts_by_decoder_norm``, which scales pre-activations by the decoder
row norms and divides them out again when decoding), so that
``encode`` gives SAELens' feature activations and ``d_i`` is the exact decoder
direction. It imports neither SAELens nor anything an engine lacks, so the
engine plugins read the same file and run the same code as the embedded
backend (:func:`l2reason.sae.ablate.ablate_features`).

An engine server reads SAE files by *name* from the one folder it was started
with (``--sae-dir``; :mod:`l2reason.serving.ablation`): :func:`check_sae_name`
is the rule for names, and :func:`sae_weights_from_bytes` parses a file the
server has opened and checked itself (it never follows a path a request sent).

Example:
    >>> import torch
    >>> w = SAEWeights(W_enc=torch.eye(2), b_enc=torch.zeros(2), b_dec=torch.zeros(2), W_dec=torch.eye(2))
    >>> w.remove(torch.tensor([[3.0, 4.0]]), torch.tensor([1])).tolist()
    [[3.0, 0.0]]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from l2reason.errors import ConfigError
from l2reason.limits import MAX_SAE_NAME_CHARS

__all__ = ["SAEWeights", "check_sae_name", "load_sae_weights", "sae_weights_from_bytes"]

#: the file format's version (``l2reason_sae`` in the safetensors metadata)
FORMAT = "1"
#: one part of an SAE name: letters, digits, ``._-``, not starting with a dot (so no ``.``/``..``, no hidden files)
_NAME_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
#: bytes of a safetensors header we parse (the metadata and four tensors' entries need well under 1 MiB)
_MAX_HEADER = 1 << 20


@dataclass(frozen=True)
class SAEWeights:
    """An SAE as plain tensors.

    Args:
        W_enc: ``[d, m]`` encoder.
        b_enc: ``[m]`` encoder bias.
        b_dec: ``[d]`` decoder bias (subtracted from the input when
            ``apply_b_dec_to_input``).
        W_dec: ``[m, d]`` decoder: row ``i`` is feature ``i``'s direction, scaled so
            that ``f @ W_dec + b_dec`` is the reconstruction.
        activation: ``"relu"`` (standard SAE) or ``"topk"`` (the ``k`` largest
            pre-activations, then ReLU).
        k: TopK's k.
        apply_b_dec_to_input: subtract ``b_dec`` before encoding.
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    b_dec: torch.Tensor
    W_dec: torch.Tensor
    activation: Literal["relu", "topk"] = "relu"
    k: int = 0
    apply_b_dec_to_input: bool = True

    def __post_init__(self) -> None:
        d, m = self.W_enc.shape if self.W_enc.dim() == 2 else (-1, -1)
        if d < 1 or self.W_dec.shape != (m, d) or self.b_enc.shape != (m,) or self.b_dec.shape != (d,):
            raise ConfigError(
                "SAE weights do not fit together: need W_enc [d, m], b_enc [m], b_dec [d], W_dec [m, d] "
                f"(got {tuple(self.W_enc.shape)}, {tuple(self.b_enc.shape)}, {tuple(self.b_dec.shape)}, "
                f"{tuple(self.W_dec.shape)})"
            )
        if self.activation not in ("relu", "topk"):
            raise ConfigError(f"SAE activation {self.activation!r} is not supported (relu or topk)")
        if self.activation == "topk" and not 1 <= self.k <= m:
            raise ConfigError(f"a TopK SAE needs 1 <= k <= {m} (got k={self.k})")
        for name in ("W_enc", "b_enc", "b_dec", "W_dec"):
            if not bool(torch.isfinite(getattr(self, name)).all()):
                raise ConfigError(f"SAE weights: {name} holds NaN/inf values")

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    def to(self, device: torch.device | str) -> SAEWeights:
        """The same SAE in float32 on ``device``."""
        f = {n: getattr(self, n).to(device=device, dtype=torch.float32) for n in ("W_enc", "b_enc", "b_dec", "W_dec")}
        return SAEWeights(**f, activation=self.activation, k=self.k, apply_b_dec_to_input=self.apply_b_dec_to_input)

    def check_features(self, features: torch.Tensor | list[int]) -> torch.Tensor:
        """``features`` as a sorted, de-duplicated long tensor; a clear error for an index out of range."""
        idx = torch.as_tensor(features, dtype=torch.long).flatten()
        if idx.numel() and (int(idx.max()) >= self.d_sae or int(idx.min()) < 0):
            raise ConfigError(f"feature indices must be in [0, {self.d_sae}) (got {idx.tolist()})")
        return torch.unique(idx)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., d] -> [..., m]`` feature activations (float32)."""
        xf = x.float()
        if xf.shape[-1] != self.d_in:
            raise ConfigError(f"the SAE reads {self.d_in}-dim states, got {xf.shape[-1]}")
        if self.apply_b_dec_to_input:
            xf = xf - self.b_dec
        pre = xf @ self.W_enc + self.b_enc
        if self.activation == "topk":
            kth = torch.topk(pre, self.k, dim=-1).values[..., -1:]
            return torch.where(pre >= kth, pre.relu(), torch.zeros_like(pre))
        return pre.relu()

    @torch.no_grad()
    def remove(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``x − f_S(x) @ W_dec[S]`` for ``x [..., d]`` (float32 math, returned in ``x``'s dtype)."""
        if features.numel() == 0:
            return x
        f = self.encode(x)[..., features]
        return (x.float() - f @ self.W_dec[features]).to(x.dtype)

    def save(self, path: str | Path) -> Path:
        """Write the SAE as one safetensors file (what an engine plugin loads)."""
        from safetensors.torch import save_file

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            n: getattr(self, n).detach().float().contiguous().cpu() for n in ("W_enc", "b_enc", "b_dec", "W_dec")
        }
        meta = {
            "l2reason_sae": FORMAT,
            "activation": self.activation,
            "k": str(self.k),
            "apply_b_dec_to_input": str(self.apply_b_dec_to_input).lower(),
        }
        save_file(tensors, str(p), metadata=meta)
        return p


def check_sae_name(name: str) -> str:
    """``name`` if it is a valid SAE name: a relative path of ``/``-separated parts made of letters, digits,
    ``.``, ``_`` and ``-``, no part starting with a dot, at most ``MAX_SAE_NAME_CHARS`` characters.

    Raises:
        ValueError: anything else (an absolute path, ``..``, an empty part, other characters).

    Example:
        >>> check_sae_name("layer20/sae.safetensors")
        'layer20/sae.safetensors'
    """
    ok = 0 < len(name) <= MAX_SAE_NAME_CHARS and all(_NAME_PART.fullmatch(p) for p in name.split("/"))
    if not ok:
        raise ValueError(
            f"an SAE is named by a file in the server's SAE folder (`--sae-dir`): a relative name of letters, "
            f"digits and ._- (parts separated by /, none starting with a dot), at most {MAX_SAE_NAME_CHARS} "
            f"characters (got {name[:80]!r})"
        )
    return name


def load_sae_weights(path: str | Path) -> SAEWeights:
    """Read a file written by :meth:`SAEWeights.save` (a local path: for code that chose the file itself).

    Raises:
        ConfigError: the file is missing, not an l2reason SAE file, or inconsistent.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"SAE file {p} does not exist (write one with `l2reason sae export`)")
    return sae_weights_from_bytes(p.read_bytes(), str(p))


def sae_weights_from_bytes(data: bytes, label: str) -> SAEWeights:
    """Parse the bytes of a file written by :meth:`SAEWeights.save`.

    Args:
        data: the whole file.
        label: how messages name the file (a server passes the request's name, never a path of its own).

    Raises:
        ConfigError: not an l2reason SAE file, or inconsistent.
    """
    from safetensors.torch import load

    try:
        n = int.from_bytes(data[:8], "little")
        if len(data) < 8 or not 2 <= n <= min(_MAX_HEADER, len(data) - 8):
            raise ValueError("bad header length")
        meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
        tensors = load(data)
    except Exception as e:  # safetensors raises its own error types for a corrupt file
        raise ConfigError(f"{label} is not a readable safetensors file: {e}") from e
    if not isinstance(meta, dict) or meta.get("l2reason_sae") != FORMAT:
        raise ConfigError(
            f"{label} is not an l2reason SAE file (format {FORMAT}); write one with `l2reason sae export`"
        )
    missing = sorted({"W_enc", "b_enc", "b_dec", "W_dec"} - set(tensors))
    if missing:
        raise ConfigError(f"{label} lacks {missing}")
    try:
        k = int(meta.get("k", "0") or 0)
    except ValueError as e:
        raise ConfigError(f"{label}: k in its metadata is not an integer ({meta.get('k')!r})") from e
    return SAEWeights(
        W_enc=tensors["W_enc"].float(),
        b_enc=tensors["b_enc"].float(),
        b_dec=tensors["b_dec"].float(),
        W_dec=tensors["W_dec"].float(),
        activation=meta.get("activation", "relu"),
        k=k,
        apply_b_dec_to_input=meta.get("apply_b_dec_to_input", "true") == "true",
    )
