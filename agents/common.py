"""What the four work agents share: the step envelope, failure tagging, pipeline stages.

Why one module: every work agent takes the orchestrator's step envelope
(``{"params", "inputs", "run", "step"}``), must name its own instance in a failure so that a
retry can avoid it, and can serve as one stage of a streaming pipeline (subscribe to a topic
prefix, process batches in order off the event loop, publish the results).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from agents.base import Agent, Context, action
from agents.work.errors import DataError
from agents.work.grouping import MAX_SYMBOL_BYTES, check_symbols
from mesh.errors import Cancelled, ConfigError, Error, HandlerError, Overloaded
from mesh.pubsub import Message
from mesh.wire import MAX_ADDRESS_BYTES

log = logging.getLogger("agp.agents")

MAX_STAGES: Final = 16
STAGE_QUEUE: Final = 100_000
#: A stage's output prefix leaves room for a dot and the longest symbol.
MAX_PREFIX_BYTES: Final = MAX_ADDRESS_BYTES - 1 - MAX_SYMBOL_BYTES
Outputs = list[tuple[str, Any]]


def step_parts(data: Any) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """``(params, inputs)`` of a call: the orchestrator's envelope, or bare params."""
    if data is None:
        return {}, {}
    if not isinstance(data, Mapping):
        raise DataError(f"expected a mapping, got {type(data).__name__}")
    if "params" not in data and "inputs" not in data:
        return data, {}
    params = data.get("params") or {}
    inputs = data.get("inputs") or {}
    if not isinstance(params, Mapping) or not isinstance(inputs, Mapping):
        raise DataError("'params' and 'inputs' must be mappings")
    return params, inputs


def find_input(inputs: Mapping[str, Any], keys: Sequence[str], what: str) -> Mapping[str, Any]:
    """The dependency output holding every one of ``keys``: a step finds its input by shape,
    so it works whatever the step that produced it is called."""
    for value in inputs.values():
        if isinstance(value, Mapping) and all(k in value for k in keys):
            return value
    raise DataError(f"no input holds {what} (keys {list(keys)}); inputs: {sorted(inputs)}")


def work(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a handler: count the call, name this instance in any failure.

    A non-mesh exception (a poison input that crashed the handler) becomes a HandlerError
    with ``details["type"]`` and ``details["instance"]``; mesh errors keep their class and
    gain ``details["instance"]``. The orchestrator uses the instance to steer retries away.
    """
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def run_async(self: WorkAgent, data: Any, ctx: Context) -> Any:
            self.calls[ctx.action] += 1
            try:
                return await fn(self, data, ctx)
            except Exception as exc:
                raise self.tag_failure(exc, ctx)
        return run_async

    @functools.wraps(fn)
    def run(self: WorkAgent, data: Any, ctx: Context) -> Any:
        self.calls[ctx.action] += 1
        try:
            return fn(self, data, ctx)
        except Exception as exc:
            raise self.tag_failure(exc, ctx)
    return run


class WorkAgent(Agent):
    """Base of the work agents: per-action counters, tagged failures, pipeline stages."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.cancelled = 0
        self.stages: dict[str, TopicStage] = {}
        self._stage_ids = itertools.count(1)

    def tag_failure(self, exc: Exception, ctx: Context) -> Exception:
        if isinstance(exc, Cancelled):
            self.cancelled += 1
        else:
            self.failures[ctx.action] += 1
        if isinstance(exc, Error):
            exc.details.setdefault("instance", self.instance_name)
            return exc
        log.warning("%s crashed on its input", ctx.action, exc_info=exc)
        err = HandlerError(f"{type(exc).__name__}: {exc}",
                           details={"type": type(exc).__name__, "instance": self.instance_name})
        err.__cause__ = exc
        return err

    def extra_stats(self) -> dict[str, Any]:
        """Hook: what a subclass adds to ``stats``."""
        return {}

    @action(inline=True)
    def stats(self, data: Any, ctx: Context) -> Any:
        """Calls, failures and cancellations per action, and the running stages."""
        return {"instance": self.instance_name, "calls": dict(self.calls),
                "failures": dict(self.failures), "cancelled": self.cancelled,
                "stages": {sid: s.stats() for sid, s in self.stages.items()},
                **self.extra_stats()}

    # ------------------------------------------------------------------ stages
    def make_stage(self, params: Mapping[str, Any]) -> Callable[[list[Message]], Outputs]:
        """Hook: the batch function of a pipeline stage built from ``params``."""
        raise ConfigError(f"{self.service} cannot run a pipeline stage")

    @action()
    @work
    async def start_stage(self, data: Any, ctx: Context) -> Any:
        """Subscribe to ``subscribe`` (a topic prefix) and process what arrives with this
        agent's stage function; returns the stage id and this instance, to stop it later."""
        params, _ = step_parts(data)
        prefix = params.get("subscribe")
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError("start_stage needs 'subscribe', a topic prefix")
        for key in ("publish", "topic"):
            out = params.get(key)
            if isinstance(out, str) and len(out.encode()) > MAX_PREFIX_BYTES:
                raise ConfigError(f"'{key}' is longer than {MAX_PREFIX_BYTES} bytes: no room "
                                  "left in a topic for the symbol")
        if len(self.stages) >= MAX_STAGES:
            raise Overloaded(f"{self.instance_name} already runs {MAX_STAGES} stages")
        process = self.make_stage(params)
        sid = f"s{next(self._stage_ids)}"
        stage = TopicStage(self, sid, prefix, process)
        try:
            await stage.start()
        except BaseException:
            await stage.stop()
            self.stage_stopped(stage)
            raise
        self.stages[sid] = stage
        return {"stage": sid, "instance": self.instance_name, "subscribe": prefix}

    def stage_stopped(self, stage: TopicStage) -> None:
        """Hook: ``stage`` stopped (or failed to start); release what ``make_stage`` kept."""

    @action()
    @work
    async def stop_stage(self, data: Any, ctx: Context) -> Any:
        """Stop a stage started here; its final counters."""
        sid = data.get("stage") if isinstance(data, Mapping) else data
        stage = self.stages.pop(sid, None) if isinstance(sid, str) else None
        if stage is None:
            raise ConfigError(f"{self.instance_name} runs no stage {sid!r}")
        final = await stage.stop()
        self.stage_stopped(stage)
        return final

    async def on_stop(self) -> None:
        for sid in list(self.stages):
            stage = self.stages.pop(sid)
            await stage.stop()
            self.stage_stopped(stage)


class TopicStage:
    """One pipeline stage inside an agent.

    Messages arrive on the event loop and wait in a bounded queue; one worker takes
    everything queued at once, runs ``process`` in a thread (so heartbeats never stall) and
    publishes what it returns, in order. Under load the stage batches more instead of
    falling behind message by message.

    Nothing is lost silently: a message refused by ``process``, an output that could not be
    published and a message dropped (queue full, worker dead) are each counted with the
    exception type or reason. The worker survives all of them; should it end anyway, its
    stats say ``worker: dead`` and why (``died``), and new messages are dropped (counted),
    not queued.
    ``busy`` is the number of messages being processed right now (off the queue, not yet
    counted as processed), so a caller waiting for the stage to settle can count them.
    """

    def __init__(self, agent: Agent, sid: str, prefix: str,
                 process: Callable[[list[Message]], Outputs], max_queue: int = STAGE_QUEUE
                 ) -> None:
        self.agent = agent
        self.sid = sid
        self.prefix = prefix
        self.process = process
        self.max_queue = max_queue
        self.queue: deque[Message] = deque()
        self.received = self.processed = self.published = self.dropped = self.errors = 0
        self.batches = self.busy = 0
        self.refused: Counter[str] = Counter()  # messages process() refused, by exception
        self.publish_failed: Counter[str] = Counter()  # outputs not published, by exception
        self.drop_reasons: Counter[str] = Counter()
        self.died: str | None = None
        self.started = time.time()
        self._stopping = False
        self._event = asyncio.Event()
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def worker(self) -> str:
        """``running``, ``stopped`` (by :meth:`stop`) or ``dead`` (ended on its own)."""
        if self.died is not None:
            return "dead"
        return "stopped" if self._stopping else "running"

    async def start(self) -> None:
        self._sub = await self.agent.mesh.subscribe(self.prefix, self._on_message)
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(self._on_worker_done)

    def _on_message(self, msg: Message) -> None:
        self.received += 1
        if self._task is not None and self._task.done():
            self._drop("worker_dead")
        elif len(self.queue) >= self.max_queue:
            self._drop("queue_full")
        else:
            self.queue.append(msg)
            self._event.set()

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        self.drop_reasons[reason] += 1

    def _on_worker_done(self, task: asyncio.Task[None]) -> None:
        """Why the worker ended, when it was not asked to (visible in :meth:`stats`)."""
        if self._stopping:
            return
        exc = None if task.cancelled() else task.exception()
        self.died = "cancelled" if exc is None else f"{type(exc).__name__}: {exc}"
        log.error("stage %s on %s: worker ended (%s); %d queued messages dropped",
                  self.sid, self.prefix, self.died, len(self.queue), exc_info=exc)
        while self.queue:  # bounded by the queue's length
            self.queue.popleft()
            self._drop("worker_dead")

    async def _run(self) -> None:
        while True:
            if not self.queue:
                self._event.clear()
                await self._event.wait()
                continue
            batch = list(self.queue)
            self.queue.clear()
            self.busy = len(batch)
            try:
                outputs = await asyncio.to_thread(self._process, batch)
                self.batches += 1
                self._publish(outputs)
            except asyncio.CancelledError:  # stop() while the batch ran: its results are lost
                self.dropped += len(batch)
                self.drop_reasons["stopped"] += len(batch)
                raise
            except Exception as exc:  # (a bug here must not end the stage)
                self.errors += len(batch)
                self.refused[f"worker:{type(exc).__name__}"] += len(batch)
                log.error("stage %s lost a batch of %d", self.sid, len(batch), exc_info=True)
            finally:
                self.busy = 0
            self.processed += len(batch)

    def _publish(self, outputs: Outputs) -> None:
        """Each output on its own: one that cannot be published costs only itself."""
        mesh = self.agent.mesh
        for topic, value in outputs:
            try:
                mesh.publish(topic, value)
            except Exception as exc:
                self.publish_failed[type(exc).__name__] += 1
                log.warning("stage %s could not publish on %.80r: %s", self.sid, topic, exc)
            else:
                self.published += 1

    def _process(self, batch: list[Message]) -> Outputs:
        """The whole batch at once; if it fails, message by message so that one bad message
        costs only itself (stage functions validate before they change any state)."""
        try:
            return self.process(batch)
        except Exception as exc:
            if len(batch) == 1:
                self.errors += 1
                self.refused[type(exc).__name__] += 1
                log.warning("stage %s refused a message on %.80s", self.sid, batch[0].topic,
                            exc_info=True)
                return []
        out: Outputs = []
        for msg in batch:
            out += self._process([msg])
        return out

    async def stop(self) -> dict[str, Any]:
        self._stopping = True
        if self._sub is not None:
            self._sub.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return self.stats()

    def stats(self) -> dict[str, Any]:
        return {"subscribe": self.prefix, "received": self.received,
                "processed": self.processed, "batches": self.batches,
                "published": self.published, "dropped": self.dropped, "errors": self.errors,
                "queued": len(self.queue), "busy": self.busy,
                "gaps": getattr(self._sub, "gaps", 0), "worker": self.worker,
                "died": self.died, "refused": dict(self.refused),
                "publish_failed": dict(self.publish_failed),
                "drop_reasons": dict(self.drop_reasons)}


def topic_for(prefix: str, symbol: str) -> str:
    """``prefix`` + symbol, with one dot between (``stats.`` + ``AAPL``); DataError when the
    symbol is not one (:func:`check_symbols`) or the topic would exceed the mesh's cap."""
    check_symbols((symbol,))
    topic = prefix + symbol if prefix.endswith(".") else f"{prefix}.{symbol}"
    if len(topic.encode()) > MAX_ADDRESS_BYTES:
        raise DataError(f"topic {topic[:60]!r}... is longer than {MAX_ADDRESS_BYTES} bytes")
    return topic


def check_topics(prefix: str, symbols: Sequence[object]) -> None:
    """DataError unless every symbol makes a valid topic under ``prefix``: what a stage
    calls before it changes any state (sends an alert, updates a model)."""
    check_symbols(symbols)
    for sym in set(symbols):  # (all str now, so hashable)
        topic_for(prefix, sym)  # type: ignore[arg-type]


def merge_batches(items: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Concatenate per-message batches (lists and arrays under ``keys``) into one, in order."""
    import numpy as np

    if len(items) == 1:
        return dict(items[0])
    out: dict[str, Any] = {}
    for key in (k for k in keys if all(k in it for it in items)):
        parts = [it[key] for it in items]
        if isinstance(parts[0], list):
            out[key] = [x for p in parts for x in p]
        else:
            out[key] = np.concatenate([np.asarray(p).reshape(-1) for p in parts])
    return out


def split_by_symbol(batch: Mapping[str, Any], keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One sub-batch per symbol (arrival order kept), for per-symbol topics."""
    import numpy as np

    from agents.work.grouping import by_symbol

    out: dict[str, dict[str, Any]] = {}
    symbols = batch["symbols"]
    for sym, idx in by_symbol(symbols):
        part: dict[str, Any] = {"symbols": [sym] * len(idx)}
        for key in keys:
            part[key] = np.asarray(batch[key])[idx]
        out[sym] = part
    return out
