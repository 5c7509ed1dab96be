"""Alerts: threshold, de-duplication, console/log-file sinks, and a real webhook."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents.work.alerts import ConsoleSink, JsonlFileSink, Notifier, WebhookSink
from agents.work.errors import DataError
from mesh.errors import ConfigError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class LocalServer:
    """A real HTTP server on 127.0.0.1:0 in a thread; ``url`` is its alerts endpoint."""

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class Hook(LocalServer):
    """A real HTTP server on 127.0.0.1:0 recording POSTed JSON bodies."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.got = threading.Semaphore(0)
        self.release = threading.Event()
        self.release.set()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.bodies.append(json.loads(body))
                hook.paths.append(self.path)
                hook.got.release()
                hook.release.wait(10)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._serve(Handler)

    def close(self) -> None:
        self.release.set()
        super().close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    try:
        yield h
    finally:
        h.close()


def test_threshold_and_dedupe() -> None:
    clock = FakeClock()
    n = Notifier(threshold=0.8, dedupe_s=60, clock=clock)
    assert n.process("AAPL", "up", 0.79) is None
    alert = n.process("AAPL", "up", 0.8, ts=5.0, message="m", details={"z": 4.2})
    assert alert is not None
    assert alert.score == 0.8
    assert alert.ts == 5.0
    assert n.process("AAPL", "up", 0.95) is None  # same symbol+kind within the window
    assert n.process("AAPL", "down", 0.95) is not None  # another kind is another alert
    assert n.process("MSFT", "up", 0.95) is not None
    clock.now += 59.9
    assert n.process("AAPL", "up", 0.99) is None
    clock.now += 0.2  # 60.1 s after the last one sent
    assert n.process("AAPL", "up", 0.99) is not None
    assert n.process("AAPL", "up", float("nan")) is None
    assert n.counters() == {"sent": 4, "suppressed": 2, "below_threshold": 2, "failed": 0}
    with pytest.raises(DataError):
        n.process("", "up", 0.9)
    with pytest.raises(ConfigError):
        Notifier(threshold=float("inf"))


def test_batch_rule_and_console_line() -> None:
    out = io.StringIO()
    n = Notifier([ConsoleSink(out)], threshold=0.8, clock=FakeClock())
    sent = n.process_batch(["A", "B", "A", "C"], [0.9, 0.5, 0.95, 0.81], kind="up",
                           timestamps=[1.0, 2.0, 3.0, 4.0])
    assert [(a.symbol, a.ts) for a in sent] == [("A", 1.0), ("C", 4.0)]
    lines = out.getvalue().splitlines()
    assert lines == ["ALERT up A score=0.900 ts=1.000", "ALERT up C score=0.810 ts=4.000"]
    assert n.counters()["suppressed"] == 1
    assert n.counters()["below_threshold"] == 1
    with pytest.raises(DataError):
        n.process_batch(["A"], [0.9, 0.9], kind="up")


def test_jsonl_log_file(tmp_path) -> None:
    path = tmp_path / "alerts.jsonl"
    sink = JsonlFileSink(path)
    n = Notifier([sink], clock=FakeClock())
    n.process("AAPL", "jump", 0.97, ts=12.5, details={"zscore": 5.1})
    n.process("MSFT", "jump", 0.85, ts=13.0)
    n.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["symbol"] for r in records] == ["AAPL", "MSFT"]
    assert records[0] == {"symbol": "AAPL", "kind": "jump", "score": 0.97, "ts": 12.5,
                          "message": "", "details": {"zscore": 5.1}}
    with pytest.raises(ConfigError):
        JsonlFileSink(tmp_path / "no" / "such" / "dir.jsonl")


def test_failing_sink_is_counted_and_others_still_run() -> None:
    class Broken:
        failed = 0

        def emit(self, alert) -> None:
            raise OSError("disk full")

        def close(self) -> None:
            pass

    out = io.StringIO()
    n = Notifier([Broken(), ConsoleSink(out)], clock=FakeClock())
    assert n.process("A", "up", 0.9) is not None
    assert out.getvalue().startswith("ALERT up A")
    assert n.counters()["failed"] == 1
    assert n.counters()["sent"] == 1


def test_webhook_posts_to_a_real_server(hook: Hook) -> None:
    sink = WebhookSink(hook.url, timeout=5)
    try:
        n = Notifier([sink], clock=FakeClock())
        n.process("AAPL", "up", 0.91, ts=1.0)
        n.process("GOOG", "up", 0.99, ts=2.0)
        assert sink.flush(timeout=10)
    finally:
        sink.close()
    assert [b["symbol"] for b in hook.bodies] == ["AAPL", "GOOG"]
    assert hook.bodies[1]["score"] == 0.99
    assert hook.paths == ["/alerts", "/alerts"]
    assert sink.sent == 2
    assert sink.failed == 0


def test_webhook_failures_and_full_queue_are_counted(hook: Hook) -> None:
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    refused = WebhookSink(dead, timeout=2)
    try:
        n = Notifier([refused], clock=FakeClock())
        n.process("A", "up", 0.9)
        assert refused.flush(timeout=10)
        assert refused.failed == 1
        assert refused.sent == 0
        assert n.counters()["failed"] == 1
        assert n.counters()["sent"] == 1
    finally:
        refused.close()

    hook.release.clear()  # the server holds the first POST until released
    slow = WebhookSink(hook.url, timeout=10, max_queue=1)
    try:
        n = Notifier([slow], clock=FakeClock())
        n.process("A", "up", 0.9)
        assert hook.got.acquire(timeout=10)  # the worker is now busy with A
        n.process("B", "up", 0.9)  # fills the one queue slot
        n.process("C", "up", 0.9)  # nowhere to go: dropped, and process() did not block
        assert slow.dropped == 1
        assert slow.failed == 1
        hook.release.set()
        assert slow.flush(timeout=10)
    finally:
        slow.close()
    assert [b["symbol"] for b in hook.bodies] == ["A", "B"]
    assert slow.sent == 2


def test_webhook_url_is_checked() -> None:
    for url in ("file:///etc/passwd", "ftp://x/", "http://", 42):
        with pytest.raises(ConfigError):
            WebhookSink(url)  # type: ignore[arg-type]


class BrokenHook(LocalServer):
    """A real HTTP server on 127.0.0.1:0 whose replies are scripted raw bytes, broken ones
    included; each POST takes the next reply (the last one repeats)."""

    def __init__(self, replies: list[bytes]) -> None:
        self.replies = list(replies)
        self.posts = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                reply = hook.replies[min(hook.posts, len(hook.replies) - 1)]
                hook.posts += 1
                self.wfile.write(reply)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self._serve(Handler)


def test_webhook_broken_http_replies_are_counted_and_the_worker_lives_on() -> None:
    hook = BrokenHook([
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",  # IncompleteRead
        b"GARBAGE\r\n\r\n",  # BadStatusLine
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",  # LineTooLong
        b"HTTP/1.1 204 No Content\r\n\r\n",  # and then a good reply
    ])
    sink = WebhookSink(hook.url, timeout=5, max_queue=10)
    try:
        n = Notifier([sink], clock=FakeClock())
        for sym in ("A", "B", "C", "D"):
            n.process(sym, "up", 0.9)
        n.process("E", "up", 0.9, details={"not_json": {1, 2}})  # a bug-like failure: a set
        n.process("F", "up", 0.9)
        assert sink.flush(timeout=20)
    finally:
        sink.close()
        hook.close()
    assert hook.posts == 5
    assert sink.failures == {"IncompleteRead": 1, "BadStatusLine": 1, "LineTooLong": 1,
                             "TypeError": 1}
    assert (sink.sent, sink.failed, sink.dropped) == (2, 4, 0)
    assert n.counters()["failed"] == 4


class Recorder:
    """A sink that keeps what it was given."""

    def __init__(self) -> None:
        self.failed = 0
        self.got: list = []

    def emit(self, alert) -> None:
        self.got.append(alert)

    def close(self) -> None:
        pass


def test_a_refused_alert_leaves_dedupe_and_counters_untouched() -> None:
    sink = Recorder()
    n = Notifier([sink], threshold=0.8, dedupe_s=60, clock=FakeClock())
    for bad in ({"ts": "now"}, {"ts": float("inf")}, {"score": float("inf")},
                {"score": True}, {"symbol": "X" * 65}):
        call = {"symbol": "AAPL", "score": 0.9, **bad}
        with pytest.raises(DataError):
            n.process(call.pop("symbol"), "up", call.pop("score"), **call)
    assert n.counters() == {"sent": 0, "suppressed": 0, "below_threshold": 0, "failed": 0}
    alert = n.process("AAPL", "up", 0.95, ts=1.0)  # the real one is not taken for a duplicate
    assert alert is not None
    assert [a.ts for a in sink.got] == [1.0]


def test_a_refused_batch_sends_nothing_so_its_retry_is_no_duplicate() -> None:
    sink = Recorder()
    n = Notifier([sink], threshold=0.8, dedupe_s=60, clock=FakeClock())
    for symbols, scores in ((["A", 5], [0.9, 0.9]), (["A", "B"], [0.9, float("inf")]),
                            (["A", "X" * 65], [0.9, 0.1])):
        with pytest.raises(DataError):
            n.process_batch(symbols, scores, kind="up")
    with pytest.raises(DataError):
        n.process_batch(["A"], [0.9], kind="up", timestamps=["soon"])
    assert sink.got == []
    assert n.counters()["sent"] == 0
    assert [a.symbol for a in n.process_batch(["A"], [0.9], kind="up")] == ["A"]
    assert len(sink.got) == 1
