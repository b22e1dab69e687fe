"""Pure-torch stand-in for the ``sgl_kernel`` package, for CPU test machines.

This is test infrastructure for running SGLang on CPU machines that have no
CPU build of the kernel package (the package registry ships CUDA builds only).
Put the folder holding this package first on ``PYTHONPATH`` of the SGLang
server process and set ``SGLANG_USE_CPU_ENGINE=1``.

Never use it on a GPU: it replaces the real CUDA kernels.

It implements only what SGLang's torch-native CPU path calls unconditionally:
:func:`assign_req_to_token_pool_cpu`. Every other ``*_cpu`` kernel name
resolves to a function that raises :class:`NotImplementedError` naming the
kernel, so a code path that needs a missing kernel fails loudly instead of
computing something wrong. Any other unknown name raises ``AttributeError``
(so ``from sgl_kernel import x`` raises ``ImportError``, which SGLang's
optional-import guards expect).

It deliberately does not register ``torch.ops.sgl_kernel.convert_weight_packed``:
SGLang probes for it to decide ``cpu_has_amx_support()``; without it every
layer, attention included, takes its torch-native fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import torch

__version__ = "0.0.0+cpu-standin"
__all__ = ["assign_req_to_token_pool_cpu"]


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """Write KV-cache slot indices into the request-to-token table, in place.

    For each batch entry ``i`` (in order) with row ``r = req_pool_indices[i]``,
    ``req_to_token[r, start_offset[i]:end_offset[i]]`` receives the next
    ``end_offset[i] - start_offset[i]`` entries of ``out_cache_loc``.
    Same semantics as SGLang's Triton ``assign_req_to_token_pool`` kernel.
    """
    if req_to_token.shape[1] != pool_len:
        raise ValueError(f"pool_len {pool_len} != req_to_token row length {req_to_token.shape[1]}")
    rows = req_pool_indices.tolist()
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    pos = 0
    for row, start, end in zip(rows, starts, ends, strict=True):
        n = end - start
        if n <= 0:
            continue
        req_to_token[row, start:end] = out_cache_loc[pos : pos + n].to(req_to_token.dtype)
        pos += n
    if pos > out_cache_loc.numel():
        raise ValueError(f"out_cache_loc has {out_cache_loc.numel()} entries, {pos} needed")


def _missing_kernel(name: str) -> Callable[..., NoReturn]:
    def kernel(*args: object, **kwargs: object) -> NoReturn:
        raise NotImplementedError(
            f"sgl_kernel.{name} is not implemented by the CPU test stand-in "
            f"(l2reason_sglang/standin); this code path needs a real sgl_kernel build"
        )

    kernel.__name__ = name
    kernel.__qualname__ = name
    return kernel


def __getattr__(name: str) -> Callable[..., NoReturn]:
    if name.endswith("_cpu"):
        return _missing_kernel(name)
    raise AttributeError(f"module 'sgl_kernel' (CPU test stand-in) has no attribute {name!r}")
