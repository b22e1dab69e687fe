"""The per-call state of the HF backend's decode loop, and the loop's bookkeeping steps.

One call of ``HFBackend._decode`` runs every candidate ("row") of a group of
requests in one batch. :class:`DecodeState` holds what the loop would
otherwise keep in locals: the rows and their settings, the output buffers
(indexed by a row's position in the call, ``[B, max_new, ...]``), and the view
of the rows still in the batch (``ix``): rows that finish or are pruned leave
the batch and the KV cache, so long outliers cost only their own compute.
Its methods are the steps of the loop that touch only tensors and the
tokenizer; the steps that run the model (prefill, forward) are
``HFBackend`` methods.

Conventions: ``B`` rows in the call, ``b`` rows still in the batch, ``t`` the
0-based decode step (step ``t`` is the state that produced generated token
``t``; the prefill's last position is step 0), ``V`` the vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from l2reason.backends.base import CollectSpec, GenerationRequest, HiddenStates, PruneSpec, SamplingParams
from l2reason.signal.certainty import self_certainty
from l2reason.techniques.controllers import CONTROLLERS, LayerController
from l2reason.techniques.pruning import PruneTracker, token_signal

_BUILTIN_CONTROLLERS = frozenset(CONTROLLERS.values())


@dataclass
class _Row:
    request: int
    index: int
    prompt_ids: list[int]
    sampling: SamplingParams
    seed: int


@dataclass
class _Step:
    """What one decode step did (streaming): the rows that emitted a token, the tokens, their norms
    (``[len(rows)][n_layers]``, the returned layers), and the rows that finished with their reason."""

    rows: list[int]
    tokens: list[int]
    norms: list[list[float]]
    finished: dict[int, str]


@dataclass
class _Capture:
    """Per-call buffers written by the hooks."""

    layers: list[int]
    col: dict[int, int]
    current: Tensor  # [B, n_cap] norms of the newest position
    controllers: dict[int, list[LayerController]] = field(default_factory=dict)
    mlp_layers: set[int] = field(default_factory=set)
    mlp_out: dict[int, Tensor] = field(default_factory=dict)
    step: int = 0
    prefill: bool = True
    valid: Tensor | None = None
    seeds: Tensor | None = None
    rows: Tensor | None = None  # state row of each batch row once rows left the batch (None: row i is i)
    nonfinite: list[tuple[int, Tensor]] = field(default_factory=list)  # (layer, [b] bool) at intervened layers
    scol: dict[int, int] = field(default_factory=dict)  # collected layer -> its index in `states`
    states: Tensor | None = None  # [B, n_collect, d] float32 newest-position states (requests with `collect`)

    @classmethod
    def build(
        cls, layers: list[int], collect: list[int], ctrls: list[LayerController], seeds: Tensor, device: torch.device
    ) -> _Capture:
        """The capture of norms at ``layers``, states at ``collect``, and the controllers' hook layers."""
        cap = cls(
            layers=layers,
            col={layer: i for i, layer in enumerate(layers)},
            current=torch.zeros(len(seeds), len(layers), device=device),
            seeds=seeds,
            scol={layer: j for j, layer in enumerate(collect)},
        )
        for c in ctrls:
            for layer in c.layers:
                cap.controllers.setdefault(layer, []).append(c)
            if c.needs_mlp:
                cap.mlp_layers.update(c.layers)
        return cap


@dataclass
class _PrunePlan:
    """Online pruning of one request of a call: its spec, tracker, first row and ℓ2 layers."""

    spec: PruneSpec
    tracker: PruneTracker
    start: int  # the request's first row in the call
    layers: list[int]
    tau: np.ndarray | None
    cols: list[int] = field(default_factory=list)  # the layers' columns in the capture


@dataclass
class DecodeState:
    """Everything one decode call keeps between steps.

    Args:
        requests: the group's requests (they share norms, logprobs, interventions and collect).
        rows: one per candidate, in request order (``B`` in all).
        out_layers: the layers returned with each candidate (the first columns of the capture).
        cap: the hooks' capture (norm columns: ``out_layers`` + the layers pruning adds).
        ctrls: the intervention controllers, one row per candidate.
        plans: one pruning plan per request (None without ``prune``).
        collect_layers: the layers whose states ``requests[0].collect`` returns.
        hidden_size: ``d``, the width of the collected states.
        pad_id: the token written after a row stopped.
        eos_ids: the token ids that end a row.
        device: where the model runs (the logprob buffers stay on the host).
    """

    requests: list[GenerationRequest]
    rows: list[_Row]
    out_layers: list[int]
    cap: _Capture
    ctrls: list[LayerController]
    plans: list[_PrunePlan | None]
    collect_layers: list[int]
    hidden_size: int
    pad_id: int
    eos_ids: set[int]
    device: torch.device
    # set in __post_init__ ------------------------------------------------
    max_new: int = field(init=False)  # the longest row's max_new_tokens
    seeds: Tensor = field(init=False)  # [B] int64 per-row seeds (the controllers' RNG)
    limits: Tensor = field(init=False)  # [B] each row's max_new_tokens
    gens: list[torch.Generator] = field(init=False)  # [B] each row's sampling generator
    k_top: int = field(init=False)  # top-k logprobs per token
    collect: CollectSpec | None = field(init=False)
    stops: list[list[str]] = field(init=False)  # [B] stop strings
    stop_window: int = field(init=False)  # tokens decoded to look for a stop string
    eos: Tensor | None = field(init=False)  # the EOS ids
    pruning: bool = field(init=False)  # some request prunes
    can_compact: bool = field(init=False)  # rows that are done may leave the batch
    pad: Tensor = field(init=False)  # [B] the pad id
    gen_ids: Tensor = field(init=False)  # [B, max_new] token ids (pad after a row stopped)
    norm_buf: Tensor = field(init=False)  # [B, max_new, n_cap] float32
    lengths: Tensor = field(init=False)  # [B] tokens generated
    done: Tensor = field(init=False)  # [B] bool
    finish: list[str] = field(init=False)  # [B] finish reasons
    nonfinite: list[tuple[int, int, int, list[int]]] = field(init=False)  # (request, candidate, step, layers)
    lp_chosen: Tensor | None = field(init=False)  # [B, max_new] host, with `logprobs`
    lp_sc: Tensor | None = field(init=False)  # [B, max_new] host: self-certainty SC_t
    lp_top: Tensor | None = field(init=False)  # [B, max_new, k] host: top-k logprobs
    state_buf: Tensor | None = field(init=False)  # [B, max_new, n, d] collected states per decode step
    state_acc: Tensor | None = field(init=False)  # [B, n, d] float32 running last/sum of the collected states
    # the rows still in the batch: `ix` maps batch row -> call row (`ixl` the same as a list)
    ix: Tensor = field(init=False)
    ixl: list[int] = field(init=False)
    attn: Tensor = field(init=False)  # [b, positions] attention mask (set by the prefill)
    pos: Tensor = field(init=False)  # [b, 1] position ids of the newest token (set by the prefill)

    def __post_init__(self) -> None:
        B, dev, req0 = len(self.rows), self.device, self.requests[0]
        self.max_new = max(r.sampling.max_new_tokens for r in self.rows)
        assert self.cap.seeds is not None
        self.seeds = self.cap.seeds
        self.limits = torch.tensor([r.sampling.max_new_tokens for r in self.rows], device=dev)
        self.gens = [torch.Generator(device=dev).manual_seed(r.seed) for r in self.rows]
        self.k_top = req0.logprobs or 0
        want_lp = req0.logprobs is not None
        self.gen_ids = torch.full((B, self.max_new), self.pad_id, dtype=torch.long, device=dev)
        self.norm_buf = torch.zeros((B, self.max_new, len(self.cap.layers)), dtype=torch.float32, device=dev)
        self.lp_chosen = torch.zeros((B, self.max_new)) if want_lp else None
        self.lp_sc = torch.zeros((B, self.max_new)) if want_lp else None
        self.lp_top = torch.zeros((B, self.max_new, self.k_top)) if want_lp and self.k_top else None
        self.lengths = torch.zeros(B, dtype=torch.long, device=dev)
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)
        self.finish = ["length"] * B
        self.nonfinite = []
        self.stops = [r.sampling.stop for r in self.rows]
        self.stop_window = max((len(s) for ss in self.stops for s in ss), default=0) + 8
        self.eos = torch.tensor(sorted(self.eos_ids), dtype=torch.long, device=dev) if self.eos_ids else None
        # collected states: per decode step ([B, T, n, d] in the requested dtype) or one running
        # last/sum per row ([B, n, d] float32); validate_requests bounded their size
        self.collect = req0.collect
        self.state_buf = self.state_acc = None
        shape = (len(self.collect_layers), self.hidden_size)
        if self.collect is not None and self.collect.positions == "decode":
            dtype = torch.float16 if self.collect.dtype == "float16" else torch.float32
            self.state_buf = torch.zeros((B, self.max_new, *shape), dtype=dtype, device=dev)
        elif self.collect is not None:
            self.state_acc = torch.zeros((B, *shape), device=dev)
        self.pruning = any(p is not None for p in self.plans)
        self.ix = torch.arange(B, device=dev)
        self.ixl = list(range(B))
        # The built-in controllers follow rows that leave the batch through `StepContext.rows`;
        # with a custom controller every row stays in place.
        self.can_compact = all(type(c) in _BUILTIN_CONTROLLERS for c in self.ctrls)
        self.pad = torch.full((B,), self.pad_id, dtype=torch.long, device=dev)

    # ---- the steps of one decode step, in order ---------------------------------------------
    def stop_nonfinite(self, t: int, logits: Tensor) -> Tensor:
        """The rows that emit a token at step ``t`` (``[b]`` bool).

        A row whose state (or logits, ``[b, V]``) went inf/NaN, say from a huge
        steering vector, stops here before it emits a token drawn from garbage;
        its stored norms stay finite.
        """
        cap, ix = self.cap, self.ix
        active = ~self.done[ix]
        bad = ~(torch.isfinite(cap.current).all(-1) & torch.isfinite(logits.sum(-1)))
        for _, f in cap.nonfinite:
            bad = bad | f
        bad = active & bad
        if bool(bad.any()):
            for k in torch.nonzero(bad).flatten().tolist():
                row = self.rows[self.ixl[k]]
                finite = torch.isfinite(cap.current[k]).tolist()
                bad_layers = {cap.layers[c] for c, ok in enumerate(finite) if not ok}
                bad_layers |= {layer for layer, f in cap.nonfinite if bool(f[k])}
                self.nonfinite.append((row.request, row.index, t + 1, sorted(bad_layers)))
                self.finish[self.ixl[k]] = "nonfinite"
                plan = self.plans[row.request]
                if plan is not None:
                    plan.tracker.drop([row.index])
            self.done[ix] = self.done[ix] | bad
            active = active & ~bad
        return active

    def record(self, t: int, active: Tensor) -> None:
        """Store step ``t``'s norms, and the states they were taken of, for the rows that emit a token."""
        cap, ix = self.cap, self.ix
        self.norm_buf[ix, t] = torch.where(active[:, None], cap.current, self.norm_buf[ix, t])
        if cap.states is None:
            return
        a3 = active[:, None, None]
        if self.state_buf is not None:
            self.state_buf[ix, t] = torch.where(a3, cap.states.to(self.state_buf.dtype), self.state_buf[ix, t])
        elif self.state_acc is not None and self.collect is not None and self.collect.positions == "mean":
            self.state_acc[ix] = self.state_acc[ix] + torch.where(a3, cap.states, 0.0)
        elif self.state_acc is not None:
            self.state_acc[ix] = torch.where(a3, cap.states, self.state_acc[ix])

    def batch_rows(self) -> tuple[list[_Row], list[torch.Generator]]:
        """The rows still in the batch and their generators (for sampling)."""
        return [self.rows[i] for i in self.ixl], [self.gens[i] for i in self.ixl]

    def emit(self, t: int, sampled: Tensor, active: Tensor) -> Tensor:
        """Write token ``t`` (``[b]``; the pad id for rows that stopped) and return it."""
        nxt = torch.where(active, sampled, self.pad[: len(self.ixl)])
        self.gen_ids[self.ix, t] = nxt
        return nxt

    def record_logprobs(self, t: int, logits: Tensor, nxt: Tensor) -> None:
        """The chosen token's logprob, the self-certainty ``SC_t`` and the top-k logprobs of step ``t``.

        All at temperature 1 (the model's distribution, not the sampling one),
        stored on the host.
        """
        assert self.lp_chosen is not None and self.lp_sc is not None
        ixc = self.ix.cpu()
        logp = torch.log_softmax(logits, -1)  # [b, V]
        self.lp_chosen[ixc, t] = logp.gather(-1, nxt[:, None])[:, 0].cpu()
        self.lp_sc[ixc, t] = self_certainty(logits).cpu()
        if self.lp_top is not None:
            self.lp_top[ixc, t] = torch.topk(logp, self.k_top, dim=-1).values.cpu()

    def advance(self, nxt: Tensor, active: Tensor) -> None:
        """Count the token; a row that emitted EOS or reached its ``max_new_tokens`` is done."""
        ix = self.ix
        self.lengths[ix] = torch.where(active, self.lengths[ix] + 1, self.lengths[ix])
        is_eos = torch.isin(nxt, self.eos) if self.eos is not None else torch.zeros_like(active)
        newly = active & (is_eos | (self.lengths[ix] >= self.limits[ix]))
        for k in torch.nonzero(newly).flatten().tolist():
            self.finish[self.ixl[k]] = "eos" if bool(is_eos[k]) else "length"
        self.done[ix] = self.done[ix] | newly

    def check_stops(self, decode: Callable[[list[int]], str]) -> None:
        """A running row whose recent text (``decode`` of its last tokens) holds a stop string is done."""
        for i in self.ixl:
            if self.stops[i] and not bool(self.done[i]):
                L = int(self.lengths[i])
                tail = decode(self.gen_ids[i, max(0, L - self.stop_window) : L].tolist())
                if any(s in tail for s in self.stops[i]):
                    self.finish[i] = "stop"
                    self.done[i] = True

    def prune(self, t: int, active: Tensor) -> None:
        """Feed step ``t``'s tokens to each request's pruning tracker; mark the rows it prunes done."""
        act = torch.nonzero(active).flatten().tolist()
        if not act:
            return
        fin_now = self.done[self.ix].tolist()
        need = {p.spec.score for p in self.plans if p is not None}
        gl = [self.ixl[k] for k in act]
        lp_top, lp_sc = self.lp_top, self.lp_sc
        conf = (-lp_top[gl, t].mean(-1)).numpy() if "confidence" in need and lp_top is not None else None
        sc = lp_sc[gl, t].numpy() if "self-certainty" in need and lp_sc is not None else None
        cur = self.cap.current[act].cpu().numpy() if "l2" in need else None
        by_req: dict[int, list[int]] = {}
        for m, i in enumerate(gl):
            by_req.setdefault(self.rows[i].request, []).append(m)
        for ri, ms in by_req.items():
            plan = self.plans[ri]
            if plan is None:
                continue
            vals = token_signal(
                plan.spec,
                confidence=None if conf is None else conf[ms],
                self_certainty=None if sc is None else sc[ms],
                norms=None if cur is None else cur[ms][:, plan.cols],
                tau=plan.tau,
            )
            local = [self.rows[gl[m]].index for m in ms]
            fin = [fin_now[act[m]] for m in ms]
            for j in plan.tracker.step(local, vals, fin):
                i = plan.start + j
                self.done[i] = True
                self.finish[i] = "pruned"

    def step_event(self, t: int, active: Tensor, done_before: Tensor) -> _Step:
        """What step ``t`` emitted and which rows it finished (``done_before``: ``done`` at its start)."""
        emitted = [self.ixl[k] for k in torch.nonzero(active).flatten().tolist()]
        ended = torch.nonzero(self.done & ~done_before).flatten().tolist()
        return _Step(
            emitted,
            self.gen_ids[emitted, t].tolist(),
            self.norm_buf[emitted, t, : len(self.out_layers)].tolist(),
            {i: self.finish[i] for i in ended},
        )

    def compact(self, cache: Any, nxt: Tensor) -> Tensor:
        """Rows that are done leave the batch and the KV ``cache``; returns the next input tokens ``[b]``."""
        still = ~self.done[self.ix]
        if self.can_compact and not bool(still.all()):
            cap = self.cap
            keep = torch.nonzero(still).flatten()
            self.ix, self.ixl = self.ix[keep], [self.ixl[k] for k in keep.tolist()]
            cache.batch_select_indices(keep)  # a transformers DynamicCache
            self.attn, self.pos, nxt = self.attn[keep], self.pos[keep], nxt[keep]
            cap.current = cap.current[keep]
            if cap.states is not None:
                cap.states = cap.states[keep]
            cap.rows = self.ix
        return nxt

    def next_step(self, step: int) -> None:
        """Set the capture and the attention/positions for the forward of decode step ``step``."""
        cap = self.cap
        cap.step = step
        cap.valid = ~self.done[self.ix]
        cap.seeds = self.seeds[self.ix]
        self.attn = torch.cat(
            [self.attn, torch.ones((len(self.ixl), 1), dtype=self.attn.dtype, device=self.device)], dim=1
        )
        self.pos = self.pos[:, -1:] + 1
        cap.nonfinite = []

    # ---- after the loop --------------------------------------------------------------------
    def collected(self, i: int) -> HiddenStates | None:
        """Row ``i``'s collected states (None without ``collect``)."""
        spec = self.collect
        if spec is None:
            return None
        L = int(self.lengths[i])
        np_dtype = np.float16 if spec.dtype == "float16" else np.float32
        if self.state_buf is not None:
            arr = self.state_buf[i, :L].cpu().numpy()  # [T, n, d]
        else:
            assert self.state_acc is not None
            acc = self.state_acc[i] / max(L, 1) if spec.positions == "mean" else self.state_acc[i]  # [n, d]
            arr = acc.cpu().numpy()
        return HiddenStates(
            layers=self.collect_layers, positions=spec.positions, array=arr.astype(np_dtype, copy=False)
        )
