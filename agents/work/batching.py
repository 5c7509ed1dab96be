"""An asyncio micro-batcher: rows submitted together are predicted in one call.

A model predicts 64 rows in about the time it takes for one, so under load the inference
service gathers concurrent requests: the first row waits at most ``max_delay_ms`` for
company (or until ``max_batch`` rows are there), then the whole batch goes to
``predict_fn`` once and each caller gets its own row's result. The queue is bounded:
when ``max_queue`` rows are waiting, :meth:`submit` raises ``Overloaded`` at once rather
than letting latency grow without limit.

``predict_fn`` takes a 2-D array and returns one result per row; it may be a coroutine
function, or a plain function run inline (fast models) or, with ``offload=True``, in the
loop's default executor so a slow model does not stall the event loop.

A bad row must not spoil the batch it would join, so each row is checked at :meth:`submit`
against what the model serving *now* expects (``rule``: its width, and whether it imputes
NaN; infinities are always refused) and only that row is refused, with ``DataError``. The
expected width is never learnt from a caller: one wrong first row, or a hot swap to a model
of another width, must not refuse every correct row after it. With no width known, a batch
whose rows differ in width is predicted one width at a time; a batch the model fails anyway
(a row no check foresaw) is predicted again row by row, so only the row at fault fails.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from agents.work.errors import DataError
from mesh.errors import Closed, ConfigError, InternalError, Overloaded


class RowRule(NamedTuple):
    """What the model serving now takes: row width, and whether NaN is imputed."""

    n_features: int
    allow_nan: bool


class MicroBatcher:
    """Gathers :meth:`submit` calls into batches for one ``predict_fn``."""

    def __init__(
        self,
        predict_fn: Callable[[np.ndarray], Any],
        max_batch: int = 64,
        max_delay_ms: float = 2.0,
        *,
        max_queue: int = 1024,
        offload: bool = False,
        n_features: int | None = None,
        allow_nan: bool = False,
        rule: Callable[[], RowRule | None] | None = None,
    ) -> None:
        """``n_features`` / ``allow_nan`` fix the row rule (by default rows must be finite:
        only a model that imputes takes NaN); ``rule``, when it returns one,
        overrides them with the serving model's (asked at every submit: cheap, and right
        across a hot swap). A row breaking the rule is refused at :meth:`submit`."""
        if not callable(predict_fn):
            raise ConfigError("predict_fn must be callable")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError("max_batch must be a positive int")
        if not isinstance(max_delay_ms, (int, float)) or not 0 <= max_delay_ms <= 10_000:
            raise ConfigError("max_delay_ms must be in [0, 10000]")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ConfigError("max_queue must be a positive int")
        if n_features is not None and (
            isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1
        ):
            raise ConfigError("n_features must be a positive int")
        if rule is not None and not callable(rule):
            raise ConfigError("rule must be callable")
        self.n_features = n_features
        self.allow_nan = bool(allow_nan)
        self._rule = rule
        self._fn = predict_fn
        self._is_async = inspect.iscoroutinefunction(predict_fn)
        self._offload = offload
        self.max_batch = max_batch
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self._pending: deque[tuple[Any, asyncio.Future[Any]]] = deque()
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0
        self.rows = 0
        self.rejected = 0  # queue full (Overloaded)
        self.refused = 0  # rows that broke the row rule (DataError to their caller)
        self.largest_batch = 0
        self.split_batches = 0  # batches that failed and were predicted row by row

    async def submit(self, row: Any) -> Any:
        """Queue one row (a 1-D sequence of numbers) and wait for its prediction."""
        if self._closed:
            raise Closed("micro-batcher is closed")
        if len(self._pending) >= self.max_queue:
            self.rejected += 1
            raise Overloaded(f"micro-batcher queue is full ({self.max_queue} rows waiting)")
        try:
            row = self._check_row(row)
        except DataError:
            self.refused += 1
            raise
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((row, fut))
        self._arrived.set()
        if len(self._pending) >= self.max_batch:
            self._full.set()
        return await fut

    def _check_row(self, row: Any) -> np.ndarray:
        try:
            arr = np.asarray(row, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError("a row must be a 1-D sequence of numbers")
        if arr.ndim != 1 or arr.size == 0:
            raise DataError(f"a row must be a non-empty 1-D sequence, got shape {arr.shape}")
        rule = self._rule() if self._rule is not None else None
        width = rule.n_features if rule is not None else self.n_features
        allow_nan = rule.allow_nan if rule is not None else self.allow_nan
        if width is not None and arr.size != width:
            raise DataError(f"row has {arr.size} values; the model takes {width}")
        bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
        if bad.any():
            raise DataError("row has infinite values" if allow_nan
                            else "row has non-finite values (this model does not impute NaN)")
        return arr

    def stats(self) -> dict[str, int]:
        return {"batches": self.batches, "rows": self.rows, "rejected": self.rejected,
                "refused": self.refused,
                "largest_batch": self.largest_batch, "split_batches": self.split_batches,
                "queued": len(self._pending)}

    async def aclose(self) -> None:
        """Stop the worker; rows still waiting fail with ``Closed``."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        while self._pending:
            _, fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(Closed("micro-batcher closed before this row ran"))

    async def __aenter__(self) -> MicroBatcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            if len(self._pending) < self.max_batch and self.max_delay > 0:
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), self.max_delay)
                except asyncio.TimeoutError:
                    pass
            n = min(self.max_batch, len(self._pending))
            batch = [self._pending.popleft() for _ in range(n)]
            await self._execute(batch)

    async def _execute(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        live = [(row, fut) for row, fut in batch if not fut.done()]  # callers may have left
        widths = sorted({row.size for row, _ in live})
        if len(widths) > 1:  # no width known: each width its own call, so none spoils another
            for w in widths:
                await self._predict([(row, fut) for row, fut in live if row.size == w])
        elif live:
            await self._predict(live)

    async def _predict(self, live: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        try:
            X = np.stack([row for row, _ in live])
            if self._is_async:
                result = await self._fn(X)
            elif self._offload:
                result = await asyncio.get_running_loop().run_in_executor(None, self._fn, X)
            else:
                result = self._fn(X)
            if len(result) != len(live):
                raise InternalError(f"predict_fn returned {len(result)} results "
                                    f"for {len(live)} rows")
        except asyncio.CancelledError:
            _fail(live, Closed("micro-batcher closed while this row ran"))
            raise
        except Exception as exc:
            if len(live) == 1:
                _fail(live, exc)
                return
            # a row the checks at submit cannot see may still fail the model (a finite value
            # too large for a float32 tree): each row alone then, so it costs only its caller
            self.split_batches += 1
            try:
                for one in live:
                    if not one[1].done():  # (its caller may have left meanwhile)
                        await self._predict([one])
            except asyncio.CancelledError:
                _fail(live, Closed("micro-batcher closed while this row ran"))
                raise
            return
        self.batches += 1
        self.rows += len(live)
        self.largest_batch = max(self.largest_batch, len(live))
        for (_, fut), value in zip(live, result, strict=True):
            if not fut.done():
                fut.set_result(value)


def _fail(live: list[tuple[Any, asyncio.Future[Any]]], exc: BaseException) -> None:
    for _, fut in live:
        if not fut.done():
            fut.set_exception(exc)
