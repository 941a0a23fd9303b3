"""Server-side batching: concurrent requests share ``generate`` calls instead of queueing one by one.

Requests arrive from many threads (HTTP handlers, the web UI). A single worker thread owns the
model: it waits for the first request, gives others ``window_s`` to arrive, takes up to
``max_batch_size`` of those that can share a call (same sampling settings), and generates them
together. Each request's text streams back through its own :class:`Handle` while the batch runs;
a request that is cancelled (its client went away) stops taking part at the next step.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from ovis.serve.generation import Completion
from ovis.serve.runner import OvisRunner, PreparedRequest

_DONE = object()


class Handle:
    """The caller's side of a submitted request: text deltas as they come, then the completion.

    Iterate it (in a thread) or ``async for`` over it (in an event loop: pass ``loop`` to
    :meth:`Batcher.submit`); :meth:`result` waits for the whole completion.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._sync: queue.Queue = queue.Queue()
        self._async: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self._cancelled = threading.Event()
        self.completion: Completion | None = None
        self.error: BaseException | None = None
        self.batch_size: int | None = None  # how many requests shared this one's generate call

    # -- called by the worker thread ----------------------------------------------------------------
    def _put(self, item) -> None:
        if self._async is not None:
            self._loop.call_soon_threadsafe(self._async.put_nowait, item)  # type: ignore[union-attr]
        else:
            self._sync.put(item)

    def _text(self, delta: str) -> None:
        self._put(delta)

    def _finish(self, completion: Completion | None, error: BaseException | None = None) -> None:
        self.completion, self.error = completion, error
        self._put(_DONE)

    # -- called by the submitter --------------------------------------------------------------------
    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self) -> Iterator[str]:
        while (item := self._sync.get()) is not _DONE:
            yield item
        if self.error is not None:
            raise self.error

    async def __aiter__(self) -> AsyncIterator[str]:
        assert self._async is not None, "submit(..., loop=...) to iterate asynchronously"
        while (item := await self._async.get()) is not _DONE:
            yield item
        if self.error is not None:
            raise self.error

    def result(self) -> Completion:
        for _ in self:
            pass
        assert self.completion is not None
        return self.completion

    async def aresult(self) -> Completion:
        async for _ in self:
            pass
        assert self.completion is not None
        return self.completion


@dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0
    largest_batch: int = 0
    generated_tokens: int = 0
    busy_s: float = 0.0
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many batches had it

    def as_dict(self) -> dict:
        return {
            "requests": self.requests, "batches": self.batches, "largest_batch": self.largest_batch,
            "mean_batch": round(self.requests / self.batches, 2) if self.batches else 0.0,
            "generated_tokens": self.generated_tokens, "busy_s": round(self.busy_s, 3),
            "batch_sizes": dict(sorted(self.sizes.items())),
        }


class Batcher:
    def __init__(self, runner: OvisRunner, *, max_batch_size: int = 16, window_s: float = 0.01) -> None:
        self.runner = runner
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self.stats = BatchStats()
        self._pending: deque[tuple[PreparedRequest, Handle]] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="ovis-batcher", daemon=True)
        self._worker.start()

    def submit(self, request: PreparedRequest, *, loop: asyncio.AbstractEventLoop | None = None) -> Handle:
        """Queue an encoded request; returns at once. Raises if the batcher was closed."""
        handle = Handle(loop)
        request.on_text = handle._text
        request.cancelled = lambda: handle.cancelled
        with self._wake:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._pending.append((request, handle))
            self._wake.notify()
        return handle

    def close(self, timeout: float | None = 10.0) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._worker.join(timeout)

    # -- the worker --------------------------------------------------------------------------------
    def _take_batch(self) -> list[tuple[PreparedRequest, Handle]]:
        with self._wake:
            while not self._pending and not self._closed:
                self._wake.wait()
            if not self._pending:
                return []
        # Let requests that arrive together join the batch (cheap next to one decoding step).
        deadline = time.monotonic() + self.window_s
        with self._wake:
            while len(self._pending) < self.max_batch_size and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(left)
            key = self._pending[0][0].params.batch_key()
            batch, rest = [], deque()
            while self._pending:
                item = self._pending.popleft()
                if len(batch) < self.max_batch_size and item[0].params.batch_key() == key and not item[1].cancelled:
                    batch.append(item)
                elif item[1].cancelled:
                    item[1]._finish(None, RuntimeError("cancelled before it started"))
                else:
                    rest.append(item)
            self._pending = rest
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                if self._closed:
                    return
                continue
            started = time.perf_counter()
            try:
                completions = self.runner.generate([request for request, _ in batch])
            except Exception as exc:  # a failing batch fails its requests, never the server
                for _, handle in batch:
                    handle._finish(None, exc)
                continue
            finally:
                self.stats.busy_s += time.perf_counter() - started
            self.stats.requests += len(batch)
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            self.stats.sizes[len(batch)] = self.stats.sizes.get(len(batch), 0) + 1
            for (_, handle), completion in zip(batch, completions, strict=True):
                self.stats.generated_tokens += completion.completion_tokens
                handle.batch_size = len(batch)
                handle._finish(completion)
