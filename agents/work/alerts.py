"""Notification logic: a threshold rule, de-duplication, and sinks.

An alert fires when its score (a probability, or a |z-score| mapped by the caller) is at
or above ``threshold``. The same (symbol, kind) fires at most once per ``dedupe_s``
seconds, counted from the last alert actually sent; the ones in between are suppressed
and counted. Sinks: a console line, a JSON-lines log file, and a webhook whose HTTP POSTs
run on a background thread behind a bounded queue, so a slow or dead endpoint never holds
up the caller (a full queue drops the alert and counts it). A sink that fails is counted
and logged; it never stops the other sinks.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import queue
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Protocol, TextIO

import numpy as np

from agents.work.errors import DataError
from agents.work.grouping import check_symbols
from mesh.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD: Final = 0.8
MAX_DEDUPE_KEYS: Final = 100_000


@dataclass(frozen=True)
class Alert:
    symbol: str
    kind: str
    score: float
    ts: float
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Sink(Protocol):
    """Where alerts go. ``emit`` raises OSError (or ValueError) on failure."""

    failed: int

    def emit(self, alert: Alert) -> None: ...

    def close(self) -> None: ...


class ConsoleSink:
    """One human-readable line per alert."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self.failed = 0

    def emit(self, alert: Alert) -> None:
        stream = self._stream or sys.stdout
        msg = f" {alert.message}" if alert.message else ""
        stream.write(f"ALERT {alert.kind} {alert.symbol} score={alert.score:.3f} "
                     f"ts={alert.ts:.3f}{msg}\n")
        stream.flush()

    def close(self) -> None:
        """Nothing to release; the stream belongs to the caller."""


class JsonlFileSink:
    """Appends one JSON object per alert to a log file (opened once, flushed per line)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            self._fh = open(path, "a", encoding="utf-8")  # closed in close()
        except OSError as exc:
            raise ConfigError(f"cannot open alert log {os.fspath(path)!r}: {exc.strerror}")
        self._lock = threading.Lock()
        self.failed = 0

    def emit(self, alert: Alert) -> None:
        line = json.dumps(alert.to_dict(), default=_jsonable, allow_nan=True)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()


class WebhookSink:
    """HTTP POSTs of each alert as JSON, sent by one worker thread.

    :meth:`emit` only enqueues; :meth:`flush` waits for what is queued to be attempted.
    ``sent``/``failed``/``dropped`` count outcomes (a drop is also a failure), and
    ``failures`` counts the failed ones by exception type. Whatever a POST raises (a
    refused connection, a broken HTTP response, a bug) costs that one alert, never the
    worker: a dead worker would leave every later alert queued and lost uncounted.
    """

    def __init__(
        self, url: str, *, timeout: float = 2.0, max_queue: int = 1000,
        headers: dict[str, str] | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"webhook url must be http(s)://host/..., not {url!r}")
        if not (isinstance(timeout, (int, float)) and 0 < timeout <= 60):
            raise ConfigError("webhook timeout must be in (0, 60] seconds")
        if not isinstance(max_queue, int) or max_queue < 1:
            raise ConfigError("webhook max_queue must be a positive int")
        self.url = url
        self.timeout = float(timeout)
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._queue: queue.Queue[Alert | threading.Event | None] = queue.Queue(max_queue)
        self._count_lock = threading.Lock()  # emit (caller) and _post (worker) both count
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.failures: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._worker, name="webhook-sink", daemon=True)
        self._thread.start()

    def emit(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            with self._count_lock:
                self.dropped += 1
                self.failed += 1
            log.warning("webhook queue full; alert for %s dropped", alert.symbol)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every alert queued so far was attempted; False on timeout."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Finish queued posts (up to ``timeout`` in all) and stop the worker. Alerts still
        queued then are abandoned and counted (``dropped``, ``failures["abandoned"]``);
        the worker stops after the POST it is in."""
        if not self._thread.is_alive():
            return
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._abandon_queued()

    def _abandon_queued(self) -> None:
        abandoned = 0
        for _ in range(self._queue.maxsize + 1):  # what is queued, then the stop marker
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Alert):  # (a flush marker stays unset: its flush says False)
                abandoned += 1
        try:
            self._queue.put_nowait(None)
        except queue.Full:  # (an emit raced in: the worker stops at the next close)
            pass
        if abandoned:
            with self._count_lock:
                self.dropped += abandoned
                self.failed += abandoned
                self.failures["abandoned"] += abandoned
            log.warning("webhook sink closed with %d alerts not sent", abandoned)

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                self._post(item)
            except Exception as exc:  # unexpected (a bug, an unencodable detail): count, go on
                self._count_failure(exc)
                log.error("webhook POST to %s crashed", self.url, exc_info=True)

    def _post(self, alert: Alert) -> None:
        body = json.dumps(alert.to_dict(), default=_jsonable).encode()
        # The scheme was checked to be http(s) in __init__ (S310 guards against file:).
        req = urllib.request.Request(  # noqa: S310
            self.url, data=body, headers=self._headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                resp.read()
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            # (HTTPException: IncompleteRead, BadStatusLine, LineTooLong... a broken reply)
            self._count_failure(exc)
            log.warning("webhook POST to %s failed: %s: %s", self.url, type(exc).__name__, exc)
            return
        with self._count_lock:
            self.sent += 1

    def _count_failure(self, exc: BaseException) -> None:
        with self._count_lock:
            self.failed += 1
            self.failures[type(exc).__name__] += 1


class Notifier:
    """Applies the threshold and de-duplication, then hands alerts to every sink."""

    def __init__(
        self,
        sinks: Sequence[Sink] = (),
        *,
        threshold: float = DEFAULT_THRESHOLD,
        dedupe_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or \
                not math.isfinite(threshold):
            raise ConfigError(f"threshold must be a finite number, not {threshold!r}")
        if not isinstance(dedupe_s, (int, float)) or not 0 <= dedupe_s < math.inf:
            raise ConfigError("dedupe_s must be a finite number >= 0")
        self.threshold = float(threshold)
        self.dedupe_s = float(dedupe_s)
        self.sinks = list(sinks)
        self._clock = clock
        self._last_sent: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()
        self.sent = 0
        self.suppressed = 0
        self.below_threshold = 0
        self._sink_failures = 0

    def process(
        self, symbol: str, kind: str, score: float, *, ts: float | None = None,
        message: str = "", details: dict[str, Any] | None = None,
    ) -> Alert | None:
        """Apply the rule to one score; the alert if it was sent, else None.

        Everything is validated before anything is recorded: a bad call raises DataError
        and leaves the de-dup window and the counters as they were."""
        _check_name(kind, "kind")
        check_symbols((symbol,))
        score = _score(score)
        when = _timestamp(ts)
        if math.isnan(score) or score < self.threshold:
            with self._lock:
                self.below_threshold += 1
            return None
        return self._send(Alert(symbol, kind, score, when, message, dict(details or {})))

    def process_batch(
        self, symbols: Sequence[str], scores: Any, *, kind: str, timestamps: Any | None = None,
    ) -> list[Alert]:
        """The rule over a batch: a vectorised threshold, then per-alert dedupe.

        The whole batch is validated before the first alert goes out, so a refused batch
        sent nothing: retrying its good part later (as a pipeline stage does, message by
        message) is not mistaken for a duplicate and suppressed."""
        _check_name(kind, "kind")
        if isinstance(symbols, (str, bytes)) or not isinstance(symbols, Sequence):
            raise DataError("symbols must be a list of strings")
        try:
            s = np.asarray(scores, dtype=np.float64).reshape(-1)
            ts = None if timestamps is None else \
                np.asarray(timestamps, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise DataError("scores and timestamps must be numeric arrays")
        if s.size != len(symbols):
            raise DataError(f"{len(symbols)} symbols but {s.size} scores")
        if ts is not None and ts.size != s.size:
            raise DataError(f"{s.size} scores but {ts.size} timestamps")
        if np.isinf(s).any() or (ts is not None and np.isinf(ts).any()):
            raise DataError("scores and timestamps must not be infinite")
        check_symbols(symbols)
        hits = np.flatnonzero(s >= self.threshold)
        with self._lock:
            self.below_threshold += int(s.size - hits.size)
        out = []
        now = time.time()
        for i in hits:
            when = now if ts is None or math.isnan(ts[i]) else float(ts[i])
            alert = self._send(Alert(symbols[int(i)], kind, float(s[i]), when))
            if alert is not None:
                out.append(alert)
        return out

    def _send(self, alert: Alert) -> Alert | None:
        """De-duplicate, then record and emit a valid alert; None if suppressed."""
        now = self._clock()
        key = (alert.symbol, alert.kind)
        with self._lock:
            last = self._last_sent.get(key)
            if last is not None and now - last < self.dedupe_s:
                self.suppressed += 1
                return None
            self._last_sent[key] = now
            self._last_sent.move_to_end(key)
            if len(self._last_sent) > MAX_DEDUPE_KEYS:
                self._last_sent.popitem(last=False)
            self.sent += 1
        for sink in self.sinks:
            try:
                sink.emit(alert)
            except (OSError, ValueError) as exc:
                with self._lock:
                    self._sink_failures += 1
                log.warning("alert sink %s failed: %s", type(sink).__name__, exc)
        return alert

    def counters(self) -> dict[str, int]:
        """sent / suppressed / below_threshold, and failed summed over the sinks."""
        failed = self._sink_failures + sum(int(getattr(s, "failed", 0)) for s in self.sinks)
        return {"sent": self.sent, "suppressed": self.suppressed,
                "below_threshold": self.below_threshold, "failed": failed}

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def _check_name(value: Any, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise DataError(f"{what} must be a non-empty string, not {value!r}")


def _number(value: Any, what: str) -> float:
    """``value`` as a float (NaN kept); a bool, a non-number or an infinity is refused: an
    infinity would make the alert's JSON invalid (``Infinity``)."""
    if isinstance(value, bool):
        raise DataError(f"{what} must be a number, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be a number, not {value!r}")
    if math.isinf(number):
        raise DataError(f"{what} must not be infinite, got {number}")
    return number


def _score(value: Any) -> float:
    """A score as a float; NaN is "no score" (below any threshold)."""
    return _number(value, "score")


def _timestamp(value: Any) -> float:
    """An alert's time: ``value`` (seconds since the epoch), or now when None or NaN."""
    ts = time.time() if value is None else _number(value, "ts")
    return time.time() if math.isnan(ts) else ts


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
