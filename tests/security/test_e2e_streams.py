"""End-to-end sealed streams on a real mesh: the open is sealed like a request, the chunks
under a key only the stream's two ends derive (security/stream_keys.py). Through the router
a tap finds no plaintext chunk and a tampered chunk ends the stream with UNAUTHENTICATED;
peer to peer the chunks skip the router altogether, inside the CURVE session between the two
ends (to the agent key the stream was sealed to), which is itself end to end."""

from __future__ import annotations

import pytest

from mesh import Unauthenticated
from mesh.wire import Cmd

SECRET = b"STREAM-SECRET-5d1e"
SVC = "test/e2e/echo"


def test_a_sealed_stream_through_the_router_shows_no_plaintext(sealed_mesh) -> None:
    m, captured, _ = sealed_mesh
    captured.clear()
    with m.stream(SVC, "ingest", direct=False) as s:
        for _ in range(40):  # more than two windows: credit flows back while sealed
            s.write(SECRET * 100, raw=True)
    assert s.result["chunks"] == 40
    assert s.result["bytes"] == 40 * len(SECRET) * 100
    assert s.result["direct"] is False
    chunks = [f for f in captured if len(f) > 1 and f[1][1] == Cmd.STREAM_DATA]
    assert len(chunks) == 40  # every chunk went through the tap ...
    assert all(f[1][2] & 2 for f in chunks)  # ... flagged sealed ...
    assert SECRET not in b"".join(b"".join(f) for f in captured)  # ... and unreadable


def test_a_sealed_stream_peer_to_peer_skips_the_router(sealed_mesh) -> None:
    m, captured, _ = sealed_mesh
    captured.clear()
    with m.stream(SVC, "ingest") as s:
        for _ in range(40):
            s.write(SECRET * 100, raw=True)
    assert s.result == {"chunks": 40, "bytes": 40 * len(SECRET) * 100,
                        "instance": s.result["instance"], "direct": True}
    assert not [f for f in captured if len(f) > 1 and f[1][1] == Cmd.STREAM_DATA]
    assert SECRET not in b"".join(b"".join(f) for f in captured)


def test_a_tampered_stream_chunk_is_refused(sealed_mesh) -> None:
    m, _, tamper = sealed_mesh
    tamper.update(on=True, cmd=Cmd.STREAM_DATA)
    try:
        with pytest.raises(Unauthenticated, match="tampered"):
            with m.stream(SVC, "ingest", direct=False) as s:
                s.write(SECRET, raw=True)
    finally:
        tamper["on"] = False
    with m.stream(SVC, "ingest", direct=False) as s:  # the agent serves the next one
        s.write(SECRET, raw=True)
    assert s.result["chunks"] == 1


def test_a_tampered_stream_open_is_refused(sealed_mesh) -> None:
    m, _, tamper = sealed_mesh
    tamper.update(on=True, cmd=Cmd.STREAM_OPEN)
    try:
        with pytest.raises(Unauthenticated):
            with m.stream(SVC, "ingest", {"p": 1}) as s:
                s.write(SECRET, raw=True)
    finally:
        tamper["on"] = False
