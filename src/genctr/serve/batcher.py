"""Dynamic micro-batching: concurrent requests share one forward pass.

The first waiting request opens a batch; requests that arrive within `max_wait` seconds join it
until it holds `max_rows` rows, or until every open connection has a request in it
(`connections`: a client waits for its answer before it sends again, so waiting longer only
delays the batch; on a 2-core VM with 8 clients the full wait was ~2 ms of every ~5 ms cycle).
Requests with different scoring keys (inference strategies) are never mixed. The forward pass
runs in one worker thread, so the event loop keeps accepting requests while the model computes,
and the model never runs twice at once. Waiting for company costs no task, timer exception or
garbage per request: the batcher sleeps on an event that the next submission (or the deadline)
sets.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Hashable

import numpy as np

from genctr.serve.rows import RequestRows

# scores one request's (or micro-batch's) rows for one key: probabilities [N] and per-row cost [N]
ScoreFn = Callable[[Hashable, RequestRows], tuple[np.ndarray, np.ndarray]]


@dataclass
class _Pending:
    key: Hashable
    rows: RequestRows
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class MicroBatcher:
    def __init__(self, score: ScoreFn, max_rows: int = 4096, max_wait: float = 0.002,
                 on_batch: Callable[[int], None] | None = None,
                 connections: Callable[[], int] | None = None) -> None:
        """`connections`: how many client connections are open (the server's count); unknown
        (None, e.g. in-process clients): batches always wait for `max_wait` or `max_rows`."""
        self.score = score
        self.max_rows = max_rows
        self.max_wait = max_wait
        self.on_batch = on_batch or (lambda rows: None)
        self.connections = connections
        self.queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genctr-score")
        self.worker: asyncio.Task | None = None
        self.arrived = asyncio.Event()
        self.expired = False  # the open batch's deadline has passed

    def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Finish every request already submitted, then stop (graceful shutdown)."""
        if self.worker is not None:
            self.queue.put_nowait(None)
            self.arrived.set()
            await self.worker
        self.executor.shutdown(wait=True)

    async def submit(self, key: Hashable, rows: RequestRows) -> tuple[np.ndarray, np.ndarray]:
        pending = _Pending(key, rows)
        self.queue.put_nowait(pending)  # unbounded: never waits
        self.arrived.set()
        return await pending.done

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        held: _Pending | None = None  # a request of another key, first in the next batch
        stopping = False
        while not (stopping and held is None):
            first = held if held is not None else await self.queue.get()
            held = None
            if first is None:
                stopping = True
                continue
            batch, rows = [first], first.rows.height
            self.expired = self.max_wait <= 0
            alarm = None if self.expired else loop.call_later(self.max_wait, self._expire)
            while rows < self.max_rows and not stopping:
                if self.connections is not None and self.connections() <= len(batch):
                    break  # every client is waiting in this batch: nobody else can join it
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    if self.expired:
                        break
                    self.arrived.clear()
                    await self.arrived.wait()  # the next request, or the deadline
                    continue
                if item is None:
                    stopping = True
                elif item.key != first.key or rows + item.rows.height > self.max_rows:
                    held = item
                    break
                else:
                    batch.append(item)
                    rows += item.rows.height
            if alarm is not None:
                alarm.cancel()
            await self._score(batch, rows)

    def _expire(self) -> None:
        """The open batch's deadline: it leaves with what it holds."""
        self.expired = True
        self.arrived.set()

    async def _score(self, batch: list[_Pending], rows: int) -> None:
        together = RequestRows.concat([pending.rows for pending in batch])
        loop = asyncio.get_running_loop()
        try:
            prob, cost = await loop.run_in_executor(self.executor, self.score, batch[0].key, together)
        except Exception as err:
            if len(batch) > 1:  # score each request alone: only the one at fault fails
                for pending in batch:
                    await self._score([pending], pending.rows.height)
            elif not batch[0].done.done():
                batch[0].done.set_exception(err)
            return
        self.on_batch(rows)
        start = 0
        for pending in batch:
            stop = start + pending.rows.height
            if not pending.done.done():
                pending.done.set_result((prob[start:stop], cost[start:stop]))
            start = stop
