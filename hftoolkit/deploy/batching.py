"""Micro-batching: concurrent requests share one model call, up to `max_batch` inputs or `max_wait` seconds.

The first request that arrives opens a batch; requests that arrive within `max_wait` (or are already queued)
join it while it holds at most `max_batch` inputs. A request is never split, and a request that would overflow
the batch opens the next one. Only requests with equal options (generation settings) share a call. The model runs
in one worker thread, so the event loop keeps accepting requests while it computes, and the model and tokenizer
are only ever used from that thread. If a shared call fails, its requests are retried one by one, so a bad input
fails only the request that sent it. `max_batch=1` turns batching off.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("hftoolkit")


@dataclass
class _Request:
    inputs: list[Any]
    options: dict[str, Any]
    future: asyncio.Future
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = json.dumps(self.options, sort_keys=True, default=str)


class MicroBatcher:
    def __init__(
        self, predict: Callable[[list, dict], list[dict]], *, max_batch: int, max_wait: float,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.on_batch = on_batch or (lambda size: None)
        self._queue: asyncio.Queue[_Request] | None = None
        self._held: deque[_Request] = deque()  # opened the next batch by not fitting into the last one
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hft-model")
        self._idle = asyncio.Event()

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._idle.set()
        self._worker = asyncio.create_task(self._loop())

    async def submit(self, inputs: list[Any], options: dict[str, Any]) -> list[dict]:
        """Predictions for `inputs`, computed in a batch with whatever else arrives at the same time."""
        assert self._queue is not None, "MicroBatcher.start() was not awaited"
        request = _Request(list(inputs), dict(options), asyncio.get_running_loop().create_future())
        self._idle.clear()
        await self._queue.put(request)
        return await request.future

    async def close(self) -> None:
        """Finish everything queued, then stop the worker (called at shutdown, after the server stopped accepting)."""
        if self._queue is not None:
            while self._held or not self._queue.empty() or not self._idle.is_set():
                await asyncio.sleep(self.max_wait or 0.001)
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            groups: dict[str, list[_Request]] = {}
            for request in batch:
                groups.setdefault(request.key, []).append(request)
            for group in groups.values():
                await self._run(group)
            if not self._held and self._queue.empty():
                self._idle.set()

    async def _collect(self) -> list[_Request]:
        assert self._queue is not None
        first = self._held.popleft() if self._held else await self._queue.get()
        batch, size = [first], len(first.inputs)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while size < self.max_batch:
            try:
                request = self._queue.get_nowait() if self._queue.qsize() else await asyncio.wait_for(
                    self._queue.get(), max(0.0, deadline - loop.time())
                )
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            if size + len(request.inputs) > self.max_batch:
                self._held.append(request)
                break
            batch.append(request)
            size += len(request.inputs)
        return batch

    async def _run(self, group: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        inputs = [x for request in group for x in request.inputs]
        self.on_batch(len(inputs))
        try:
            results = await loop.run_in_executor(self._executor, self.predict, inputs, group[0].options)
        except Exception as e:
            if len(group) == 1:
                _settle(group[0].future, error=e)
                return
            log.info("a batch of %d requests failed (%s); answering them one by one", len(group), type(e).__name__)
            for request in group:
                await self._run([request])
            return
        start = 0
        for request in group:
            _settle(request.future, result=results[start: start + len(request.inputs)])
            start += len(request.inputs)


def _settle(future: asyncio.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the client went away and its handler was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
