"""The training data pipeline: rows read, masked and pinned ahead of the step that needs them.

A microbatch is a pure function of its :class:`MicrobatchRequest` (which rows, at which
budget progress) and the run's seed: rows come from :class:`RowOrder`, masks from keyed
randomness (:mod:`cramming.data.keyed_random`). Background threads can therefore build
microbatches early and in any order, and each rank builds only its own rows, without
changing a single value: exact resume and determinism hold with any worker count.

The engine declares the requests it will make (:meth:`DataPipeline.schedule`), the
workers build up to ``prefetch`` of them ahead, and :meth:`DataPipeline.get` hands one
over, measuring how long the step waited for it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch

from cramming.data.prepare import PackedDataset
from cramming.objectives.base import Microbatch


class RowOrder:
    """Which dataset row the n-th draw of a stream reads: a seeded permutation per epoch.

    Draw position ``n`` reads row ``permutation(epoch = n // num_rows)[n % num_rows]``, so a
    position alone says where the data stream is; nothing else needs to be saved.
    """

    def __init__(self, num_rows: int, seed: int, stream: int = 0):
        if num_rows < 1:
            raise ValueError("cannot draw rows from an empty dataset")
        self.num_rows, self.seed, self.stream = num_rows, seed, stream
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def permutation(self, epoch: int) -> np.ndarray:
        """The row order of ``epoch`` (cached; safe to call from several threads)."""
        with self._lock:
            order = self._cache.get(epoch)
            if order is None:
                key = [self.seed, epoch] if self.stream == 0 else [self.seed, epoch, self.stream]
                order = np.random.default_rng(key).permutation(self.num_rows)
                self._cache[epoch] = order
                while len(self._cache) > 3:
                    self._cache.popitem(last=False)
            return order

    def rows(self, start: int, count: int) -> np.ndarray:
        """Dataset row indices of draw positions ``[start, start + count)``."""
        chunks, position, end = [], start, start + count
        while position < end:
            epoch, offset = divmod(position, self.num_rows)
            take = min(end - position, self.num_rows - offset)
            chunks.append(self.permutation(epoch)[offset:offset + take])
            position += take
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)

    def epoch(self, position: int) -> int:
        """The epoch that draw position ``position`` belongs to."""
        return position // self.num_rows


@dataclasses.dataclass(frozen=True)
class MicrobatchRequest:
    """One rank's share of one microbatch: ``size`` rows from draw position ``start``.

    ``index`` counts the stream's microbatches (objectives may depend on it, e.g. the
    hybrid's MNTP/CLM alternation); ``progress`` is the budget progress it is built for.
    """

    stream: int
    start: int
    size: int
    index: int
    progress: float


class PipelineObjective(Protocol):
    def microbatch(self, rows: dict[str, torch.Tensor], progress: float, index: int,
                   stream: int = 0) -> Microbatch: ...

    def schedule_key(self, progress: float) -> Hashable: ...


def pin(batch: Microbatch) -> Microbatch:
    """The same microbatch in page-locked memory (so ``non_blocking`` copies overlap)."""

    def pinned(value):
        return value.pin_memory() if isinstance(value, torch.Tensor) else value

    return dataclasses.replace(
        batch, input_ids=pinned(batch.input_ids), labels=pinned(batch.labels),
        model_kwargs={key: pinned(value) for key, value in batch.model_kwargs.items()})


class DataPipeline:
    """Builds microbatches for one rank, ``prefetch`` ahead on ``workers`` threads.

    ``workers=0`` builds each microbatch on the calling thread when it is asked for.
    """

    def __init__(self, data: PackedDataset, objective: PipelineObjective, seed: int,
                 workers: int = 1, prefetch: int = 2, pin_memory: bool = False):
        self.data, self.objective, self.seed = data, objective, seed
        self.prefetch = max(prefetch, 0) if workers > 0 else 0
        self.pin_memory, self.workers = pin_memory, max(workers, 0)
        self._orders: dict[int, RowOrder] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._plan: list[MicrobatchRequest] = []
        self._guesses: dict[int, MicrobatchRequest] = {}  # next draw of unplanned streams
        self._futures: OrderedDict[Hashable, Future] = OrderedDict()

    def order(self, stream: int) -> RowOrder:
        """The row order of ``stream`` (stream 0 is the training stream)."""
        if stream not in self._orders:
            self._orders[stream] = RowOrder(len(self.data), self.seed, stream)
        return self._orders[stream]

    def _key(self, request: MicrobatchRequest) -> Hashable:
        return (request.stream, request.start, request.size, request.index,
                self.objective.schedule_key(request.progress))

    def build(self, request: MicrobatchRequest) -> Microbatch:
        """The microbatch ``request`` describes (pure; any thread)."""
        order = self.order(request.stream)
        positions = np.arange(request.start, request.start + request.size, dtype=np.int64)
        rows = self.data.batch(order.rows(request.start, request.size))
        rows["keys"] = torch.from_numpy(positions)
        batch = self.objective.microbatch(rows, request.progress, request.index, request.stream)
        return pin(batch) if self.pin_memory else batch

    def schedule(self, requests: Sequence[MicrobatchRequest]) -> None:
        """Declare the coming requests, in order; work that no longer fits is dropped."""
        self._plan = list(requests)
        wanted = {self._key(request) for request in self._upcoming()}
        for key in [key for key in self._futures if key not in wanted]:
            self._futures.pop(key).cancel()
        self._top_up()

    def _upcoming(self) -> list[MicrobatchRequest]:
        return [*self._plan, *self._guesses.values()]

    def _top_up(self) -> None:
        if not self.workers:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="data")
        for request in self._upcoming():
            if len(self._futures) >= self.prefetch:
                break
            key = self._key(request)
            if key not in self._futures:
                self._futures[key] = self._executor.submit(self.build, request)

    def get(self, request: MicrobatchRequest) -> tuple[Microbatch, float]:
        """The microbatch for ``request`` and the seconds spent waiting for it."""
        key = self._key(request)
        started = time.perf_counter()
        future = self._futures.pop(key, None)
        batch = future.result() if future is not None else self.build(request)
        waited = time.perf_counter() - started
        planned = [i for i, item in enumerate(self._plan) if self._key(item) == key]
        if planned:
            del self._plan[planned[0]]
        elif self.workers:
            # an unplanned stream (a hook's draws): guess that its next draw follows this one
            self._guesses[request.stream] = dataclasses.replace(
                request, start=request.start + request.size, index=request.index + 1)
        self._top_up()
        return batch, waited

    def close(self) -> None:
        """Stop the workers (pending work is dropped); a later request restarts them."""
        self._plan, self._guesses = [], {}
        if self._executor is not None:
            for future in self._futures.values():
                future.cancel()
            self._futures.clear()
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
