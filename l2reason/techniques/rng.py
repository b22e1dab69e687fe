"""Counter-based random numbers: u = H(seed, counter, stream), no RNG state.

A controller step may not touch a global RNG: it runs inside CUDA-graph
capture and on every tensor-parallel rank, and must give the same draw on
each (``docs/techniques.md``, "Step functions and randomness"). So a draw is a pure hash
of the row's seed and the row's own step counter, like Philox or
splitmix64 but written with plain int64 tensor ops.

How it differs from splitmix64: splitmix64 multiplies 64-bit words modulo
2**64, which in int64 arithmetic means signed overflow (undefined in C++, so a
compiler may do anything with it). Here every word is split into two 32-bit
halves and mixed with murmur3's ``fmix32`` finaliser, whose 32-bit products are
computed from 16-bit pieces of the constant: every intermediate value stays in
[0, 2**49), no shift ever sees a negative number, and the result is the same
bit for bit on CPU, CUDA, eager and compiled code.

Example:
    >>> import torch
    >>> seed = torch.tensor([1, 2], dtype=torch.int64)
    >>> step = torch.tensor([0, 0], dtype=torch.int64)
    >>> u = hash_uniform(seed, step)
    >>> bool(((u >= 0) & (u < 1)).all())
    True
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

__all__ = ["STREAM_ERSS", "STREAM_SUPPRESS", "hash_uniform", "request_seed"]

#: Stream ids keep the draws of different controllers independent for one seed.
STREAM_ERSS = 1
STREAM_SUPPRESS = 2

_M32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9  # 2**32 / φ, the Weyl increment of splitmix/TEA
_FMIX_C1 = 0x85EBCA6B  # murmur3 fmix32 constants (Appleby, MurmurHash3)
_FMIX_C2 = 0xC2B2AE35


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x·c) mod 2**32 for int64 x in [0, 2**32) without int64 overflow."""
    c_lo, c_hi = c & 0xFFFF, c >> 16
    # x·c_lo < 2**48; ((x·c_hi) mod 2**16)·2**16 < 2**32: no overflow anywhere.
    return (x * c_lo + (((x * c_hi) & 0xFFFF) << 16)) & _M32


def _fmix32(h: Tensor) -> Tensor:
    """murmur3's 32-bit finaliser (a bijection with full avalanche) on int64 lanes."""
    h = h ^ (h >> 16)
    h = _mul32(h, _FMIX_C1)
    h = h ^ (h >> 13)
    h = _mul32(h, _FMIX_C2)
    return h ^ (h >> 16)


def _fmix32_py(h: int) -> int:
    h ^= h >> 16
    h = (h * _FMIX_C1) & _M32
    h ^= h >> 13
    h = (h * _FMIX_C2) & _M32
    return h ^ (h >> 16)


def hash_uniform(seed: Tensor, counter: Tensor, stream: int = 0) -> Tensor:
    """One uniform draw in [0, 1) per row from (seed, counter, stream).

    Pure and fullgraph-compilable: same inputs, same outputs, on any device.

    Args:
        seed: [B] int64, the row's seed (any int64, negatives fine).
        counter: [B] int64, the row's step counter.
        stream: a Python int naming the consumer (see ``STREAM_*``), so two
            controllers sharing a seed draw independent numbers.

    Returns:
        [B] float32 in [0, 1), a multiple of 2**-24.

    Example:
        >>> import torch
        >>> s = torch.zeros(3, dtype=torch.int64)
        >>> c = torch.arange(3)
        >>> torch.equal(hash_uniform(s, c), hash_uniform(s, c))
        True
    """
    h0 = _fmix32_py((stream * _GOLDEN32 + 0x7F4A7C15) & _M32)
    words = (
        seed & _M32,
        (seed >> 32) & _M32,  # mask after the (arithmetic) shift: negatives are fine
        counter & _M32,
        (counter >> 32) & _M32,
    )
    h = torch.full_like(seed, h0)
    for i, w in enumerate(words):  # a static 4-step unroll, not a loop over rows
        h = _fmix32(((h + (i + 1) * _GOLDEN32) & _M32) ^ w)
    h = _fmix32(h ^ (h0 >> 1))
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))  # top 24 bits: exact in fp32


def request_seed(request_id: str, base_seed: int = 0) -> int:
    """A stable int64 seed for a request (same id and base seed -> same seed).

    Args:
        request_id: the request's id.
        base_seed: the run's seed.

    Returns:
        A non-negative int below 2**63.

    Example:
        >>> request_seed("req-1") == request_seed("req-1")
        True
    """
    digest = hashlib.blake2b(f"{base_seed}:{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
