"""``StreamIn`` fed frames as the direct socket hands them over: a large chunk arrives as a
memoryview of libzmq's buffer; iterating gives ``bytes`` (a copy, the type handlers always
had), ``views()`` gives a read-only view of that same buffer (no copy)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agents.stream_in import StreamIn
from mesh.errors import Overloaded
from mesh.wire import Cmd, Flag, pack_route


def _fed(payloads: list[Any]) -> StreamIn:
    st = StreamIn(agent=None, crid=b"c", ident=7, window=16)  # type: ignore[arg-type]
    for p in payloads:
        st.push([pack_route(Cmd.STREAM_DATA, int(Flag.RAW), 0, 0, 7), b"", b"", p],
                direct=True)
    st.end()
    return st


def test_iterating_gives_bytes_and_views_give_the_received_buffer_read_only() -> None:
    buf = bytearray(b"abc" * 1000)  # stands for the zmq.Frame a view keeps alive
    received = memoryview(buf)

    async def main() -> tuple[list[Any], list[Any]]:
        copied = [c async for c in _fed([received, b"tail"])]
        viewed = [c async for c in _fed([received, b"tail"]).views()]
        return copied, viewed

    copied, viewed = asyncio.run(main())
    assert [type(c) for c in copied] == [bytes, bytes]
    assert copied[0] == bytes(buf)
    view, tail = viewed
    assert isinstance(view, memoryview)
    assert view.readonly
    assert view.obj is buf  # the buffer it came in, not a copy
    assert tail == b"tail"
    buf[0:3] = b"xyz"
    assert bytes(view[:3]) == b"xyz"
    assert copied[0][:3] == b"abc"


def test_a_sender_past_its_credit_ends_the_stream_overloaded_every_extra_chunk_counted(
) -> None:
    class Agent:  # what StreamIn asks of its agent: a drop counter and a credit sender
        def __init__(self) -> None:
            self.dropped: dict[str, int] = {}
            self.direct = None
            self.sent: list[list[bytes]] = []

        def _count_drop(self, reason: str) -> None:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1

        def _send(self, frames: list[bytes]) -> None:
            self.sent.append(frames)

    agent = Agent()
    st = StreamIn(agent=agent, crid=b"c", ident=7, window=4)  # type: ignore[arg-type]

    def chunk(i: int) -> list[bytes]:
        return [pack_route(Cmd.STREAM_DATA, int(Flag.RAW), 0, 0, 7), b"", b"", bytes([i])]

    got: list[bytes] = []

    async def main() -> None:
        for i in range(6):  # a window of 4: the fifth and sixth were never granted
            st.push(chunk(i))
        async for c in st:
            got.append(c)
            st.push(chunk(9))  # room again, but the stream is over: dropped too

    with pytest.raises(Overloaded, match="flow control"):
        asyncio.run(main())
    assert got == [bytes([i]) for i in range(4)]  # what came within its credit
    assert agent.dropped == {"stream_overrun": 2 + 4}
