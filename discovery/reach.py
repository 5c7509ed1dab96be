"""Which of a router's announced addresses answers: try them in order, bounded in time.

An mDNS record may carry several addresses (one per interface of the announcing host), and a
browse may return several records for one router (a stale one of a process since restarted
on another port, say). Some of them cannot be reached from here: the address of an interface
on another network, a port nobody listens on any more. ZeroMQ's connect never says so (it
retries in the background), so a client handed such an endpoint would wait out its whole
connect timeout. Before :func:`discovery.browse.find_router` hands out a router, it opens a
TCP connection to each address in :func:`~discovery.announcement.candidate_addresses` order
and keeps the first that greets it as a ZeroMQ peer does (the ZMTP signature, RFC 23/ZMTP:
``0xFF``, eight bytes, ``0x7F``, sent by libzmq as soon as it accepts). The connection is
then closed before any handshake: the CURVE handshake of the real connection proves the key.

Each address costs at most ``CONNECT_TIMEOUT``; one announcement at most ``budget`` seconds.
A refused connection (nothing listens there) costs a round trip, not the timeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from typing import Final

from discovery.announcement import Announcement, candidate_addresses

CONNECT_TIMEOUT: Final = 0.5  # seconds one address may take to accept and greet
SIGNATURE_LEN: Final = 10  # the ZMTP 3 signature: 0xFF, 8 bytes of padding, 0x7F


def _zmtp(greeting: bytes) -> bool:
    return len(greeting) == SIGNATURE_LEN and greeting[0] == 0xFF and greeting[-1] == 0x7F


def _answers(host: str, port: int, until: float) -> bool:
    """True when a ZeroMQ peer accepts at host:port and greets before ``until``."""
    left = min(CONNECT_TIMEOUT, until - time.monotonic())
    if left <= 0:
        return False
    try:
        with socket.create_connection((host, port), timeout=left) as conn:
            got = b""
            for _ in range(SIGNATURE_LEN):  # bounded: each pass reads at least one byte
                left = until - time.monotonic()
                if left <= 0:
                    return False
                conn.settimeout(left)
                chunk = conn.recv(SIGNATURE_LEN - len(got))
                if not chunk:
                    return False
                got += chunk
                if len(got) == SIGNATURE_LEN:
                    break
            return _zmtp(got)
    except OSError:  # refused, unreachable, timed out, reset
        return False


def first_answering(ann: Announcement, budget: float = 2 * CONNECT_TIMEOUT
                    ) -> Announcement | None:
    """``ann`` with :attr:`~Announcement.reached` set to its first address that answers,
    or None when none does within ``budget`` seconds."""
    until = time.monotonic() + budget
    for host in candidate_addresses(ann.addresses):
        if time.monotonic() >= until:
            break
        if _answers(host, ann.port, min(until, time.monotonic() + CONNECT_TIMEOUT)):
            return dataclasses.replace(ann, reached=host)
    return None


async def _async_answers(host: str, port: int, timeout: float) -> bool:
    if timeout <= 0:
        return False
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        greeting = await asyncio.wait_for(reader.readexactly(SIGNATURE_LEN),
                                          max(0.001, until - loop.time()))
        return _zmtp(greeting)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            pass


async def async_first_answering(ann: Announcement, budget: float = 2 * CONNECT_TIMEOUT
                                ) -> Announcement | None:
    """:func:`first_answering` for coroutines."""
    loop = asyncio.get_running_loop()
    until = loop.time() + budget
    for host in candidate_addresses(ann.addresses):
        left = min(CONNECT_TIMEOUT, until - loop.time())
        if left <= 0:
            break
        if await _async_answers(host, ann.port, left):
            return dataclasses.replace(ann, reached=host)
    return None
