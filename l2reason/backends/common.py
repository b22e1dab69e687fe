"""What every backend does the same way once tokens and norms exist: thresholds, summaries, selection.

The embedded transformers backend and the SGLang client both turn a
candidate's ``[T, n_layers]`` norms into :class:`~l2reason.backends.base.NormStats`
and pick a candidate with :mod:`l2reason.select` through these functions, so
the same request gives the same summaries and the same choice on either engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import torch

from l2reason.backends.base import GenerationRequest, GenerationResult, NormSpec, NormStats, StreamEvent
from l2reason.errors import ConfigError
from l2reason.signal.norms import massive_activation_mask

T = TypeVar("T")


def row_seed(seed: int, index: int) -> int:
    """The seed of candidate ``index`` of a request with base ``seed`` (stable across runs and engines)."""
    h = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 62) - 1)


def encode_prompt(tokenizer: Any, request: GenerationRequest) -> list[int]:
    """The prompt's token ids: chat messages through the model's chat template, or raw text.

    A tokenizer without a chat template gets ``role: content`` lines and an
    ``assistant:`` cue.

    Raises:
        ConfigError: the prompt encodes to no tokens.
    """
    tok = tokenizer
    if request.messages is not None:
        if getattr(tok, "chat_template", None) is None:
            text = "\n".join(f"{m.role}: {m.content}" for m in request.messages) + "\nassistant:"
            ids = tok(text, add_special_tokens=True)["input_ids"]
        else:
            msgs = [m.model_dump() for m in request.messages]
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
    else:
        ids = tok(request.prompt, add_special_tokens=True)["input_ids"]
    ids = [int(i) for i in ids]
    if not ids:
        raise ConfigError("the prompt encodes to zero tokens")
    return ids


class CalibrationMixin:
    """The model's calibration file (given, or the default one for ``model_id``) and the τ it holds.

    A class using it sets ``self._calibration`` (a Calibration or None) and has ``model_id``.
    """

    _calibration: Any
    model_id: str

    @property
    def calibration(self) -> Any:
        """The calibration in use, the first of: the one given; the user's file for ``model_id``
        (written by ``l2reason calibrate``); the file shipped with l2reason for these exact weights."""
        if self._calibration is None:
            from l2reason.signal.calibration import Calibration, default_calibration_path, shipped_calibration

            path = default_calibration_path(self.model_id)
            if path.is_file():
                self._calibration = Calibration.load(path, expected_model_id=self.model_id)
            else:
                self._calibration = shipped_calibration(self.model_id, getattr(self, "weights_sha256", None))
        if self._calibration is not None:
            # sizes (and the weights' hash, where both are known) against the model loaded now:
            # a calibration of another model, release or conversion is refused
            sizes = {"num_layers": getattr(self, "num_layers", None), "hidden_size": getattr(self, "hidden_size", None)}
            self._calibration.check_model(
                **{k: v for k, v in sizes.items() if isinstance(v, int)},
                weights_sha256=getattr(self, "weights_sha256", None),
            )
        return self._calibration

    @staticmethod
    def _load_calibration(calibration: Any, model_id: str) -> Any:
        if calibration is None:
            return None
        from l2reason.signal.calibration import Calibration

        if isinstance(calibration, Calibration):
            return calibration
        return Calibration.load(calibration, expected_model_id=model_id)

    def calibrated_tau(self, layers: list[int], what: str, alternative: str) -> torch.Tensor:
        """τ_l of ``layers`` from the model's calibration; a clear error naming ``what`` needs it if there is none."""
        cal = self.calibration
        if cal is None:
            raise ConfigError(
                f"{what} needs a calibration file for {self.model_id!r}: run `l2reason calibrate` first, or {alternative}"
            )
        return cal.tau_for(layers)

    def norm_tau(self, spec: NormSpec, layers: list[int]) -> torch.Tensor | None:
        """The thresholds of a :class:`NormSpec`'s A/B/C/D summaries (None: no summaries)."""
        if spec.tau is None:
            return None
        if spec.tau == "calibrated":
            return self.calibrated_tau(layers, "tau='calibrated'", "pass explicit tau values")
        if len(spec.tau) != len(layers):
            raise ConfigError(f"tau has {len(spec.tau)} values but {len(layers)} layers are captured ({layers})")
        return torch.tensor(spec.tau, dtype=torch.float32)

    def norm_stats(self, norms: torch.Tensor, layers: list[int], spec: NormSpec) -> NormStats:
        """Summaries of one candidate's ``[T, n_layers]`` float32 norms."""
        from l2reason.signal.stats import abcd_stats

        T = norms.shape[0]
        if spec.mask_massive and T > 0:
            masked_tl = massive_activation_mask(norms.T, factor=spec.massive_factor).T  # [T, n]
            masked = masked_tl.any(-1)
        else:
            masked = torch.zeros(T, dtype=torch.bool)
        valid = ~masked
        cnt = valid.sum()
        mean = (norms * valid[:, None]).sum(0) / cnt.clamp(min=1)
        stats = NormStats(
            layers=layers,
            per_token=norms.tolist() if spec.per_token else None,
            masked=masked.tolist(),
            mean=mean.tolist(),
            T=int(cnt),
        )
        tau = self.norm_tau(spec, layers)
        if tau is not None:
            s = abcd_stats(norms, tau, valid=valid, tail_frac=spec.tail_frac)
            stats.tau = tau.tolist()
            stats.A, stats.B, stats.C, stats.D = s.A.tolist(), s.B.tolist(), s.C.tolist(), s.D.tolist()
            stats.T_tail = int(s.T_tail.max()) if s.T_tail.numel() else 0
        return stats

    def finish(self, result: GenerationResult, request: GenerationRequest, num_layers: int) -> GenerationResult:
        """Apply the request's selection (if any) to a result whose candidates are complete."""
        if request.selection is not None:
            from l2reason.select import apply_selection, select_result

            # the l2-probe methods read the fitted probe from the model's calibration file
            needs_cal = request.selection.tau == "calibrated" or request.selection.method.startswith("l2-probe")
            cal = self.calibration if needs_cal else None
            apply_selection(result, select_result(result, request.selection, calibration=cal, num_layers=num_layers))
        return result


def events_from_result(result: GenerationResult) -> Iterator[StreamEvent]:
    """A finished result as stream events: one delta and one finish per candidate, then the result.

    For backends that cannot stream token by token (the SGLang client, for now).
    """
    for c in result.candidates:
        norms = c.norms.per_token if c.norms is not None else None
        layers = c.norms.layers if c.norms is not None else None
        yield StreamEvent(kind="delta", candidate=c.index, text=c.text, layers=layers, norms=norms)
        yield StreamEvent(kind="finish", candidate=c.index, finish_reason=c.finish_reason, layers=layers, norms=[])
    yield StreamEvent(kind="result", result=result)


async def iterate_in_thread(gen: Iterator[T]) -> AsyncIterator[T]:
    """Run a (blocking) generator in a worker thread and yield its items to asyncio.

    Closing the async iterator (``aclose``, a cancelled task, leaving an
    ``async for``) stops the worker after its current item and closes ``gen``
    in the worker's thread, so the generator's ``finally`` blocks (hooks,
    locks) run where they were entered.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()
    stop = threading.Event()
    end = object()

    def put(item: Any, err: BaseException | None = None) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (item, err))
            return True
        except RuntimeError:  # the loop is closed: nobody is listening
            return False

    def work() -> None:
        try:
            for item in gen:
                if stop.is_set() or not put(item):
                    return
                if stop.is_set():
                    return
        except BaseException as e:
            put(end, e)
            return
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()
        put(end)

    worker = threading.Thread(target=work, name="l2reason-stream", daemon=True)
    worker.start()
    try:
        while True:
            item, err = await queue.get()
            if item is end:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        await asyncio.to_thread(worker.join)
