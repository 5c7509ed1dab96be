"""The stream key exchange and chunk sealing, fed bytes (security/stream_keys.py)."""

from __future__ import annotations

import pytest
from nacl.public import PrivateKey

from mesh.errors import Malformed, Unauthenticated
from security.stream_keys import ChunkOpener, ChunkSealer, ClientExchange, agent_answer


def _pair(stream_id: int = 7) -> tuple[ChunkSealer, ChunkOpener]:
    agent = PrivateKey.generate()
    client = ClientExchange(stream_id)
    eph, proof, agent_key = agent_answer(bytes(agent), client.public, stream_id)
    client_key = client.finish(bytes(agent.public_key), eph, proof)
    assert client_key == agent_key
    return ChunkSealer(client_key, stream_id), ChunkOpener(agent_key, stream_id)


def test_both_ends_derive_one_key_and_chunks_open_in_order() -> None:
    sealer, opener = _pair()
    for i in range(5):
        frames = [b"chunk %d" % i, b"second frame"]
        sealed = sealer.seal(frames)
        assert all(b"chunk" not in f for f in sealed)
        assert opener.open(sealed) == frames


def test_every_stream_gets_a_fresh_key() -> None:
    a, _ = _pair()
    b, _ = _pair()
    assert a.seal([b"same"]) != b.seal([b"same"])


def test_an_answer_not_made_by_the_agents_key_is_refused() -> None:
    agent, impostor = PrivateKey.generate(), PrivateKey.generate()
    client = ClientExchange(1)
    eph, proof, _ = agent_answer(bytes(impostor), client.public, 1)
    with pytest.raises(Unauthenticated):
        client.finish(bytes(agent.public_key), eph, proof)


def test_an_answer_for_another_stream_is_refused() -> None:
    agent = PrivateKey.generate()
    client = ClientExchange(1)
    eph, proof, _ = agent_answer(bytes(agent), client.public, 2)
    with pytest.raises(Unauthenticated):
        client.finish(bytes(agent.public_key), eph, proof)


def test_the_client_forgets_its_ephemeral_secret() -> None:
    agent = PrivateKey.generate()
    client = ClientExchange(3)
    eph, proof, _ = agent_answer(bytes(agent), client.public, 3)
    client.finish(bytes(agent.public_key), eph, proof)
    with pytest.raises(Malformed):
        client.finish(bytes(agent.public_key), eph, proof)


def test_tampered_replayed_reordered_or_reshaped_chunks_are_refused() -> None:
    sealer, opener = _pair()
    first, second = sealer.seal([b"one"]), sealer.seal([b"two"])
    tampered = bytearray(first[0])
    tampered[3] ^= 1
    with pytest.raises(Unauthenticated):
        opener.open([bytes(tampered)])
    with pytest.raises(Unauthenticated):  # out of order
        opener.open(second)
    assert opener.open(first) == [b"one"]  # a refusal changes nothing
    with pytest.raises(Unauthenticated):  # replayed
        opener.open(first)
    assert opener.open(second) == [b"two"]
    two = sealer.seal([b"a", b"b"])
    with pytest.raises(Unauthenticated):  # frames swapped
        opener.open([two[1], two[0]])
    with pytest.raises(Unauthenticated):  # a frame dropped
        opener.open([two[0]])
    assert opener.open(two) == [b"a", b"b"]


def test_malformed_keys_and_shapes_get_typed_errors() -> None:
    client = ClientExchange(1)
    with pytest.raises(Malformed):
        client.finish(b"short", b"x" * 32, b"p" * 32)
    with pytest.raises(Malformed):
        agent_answer(bytes(PrivateKey.generate()), b"short", 1)
    sealer, opener = _pair()
    with pytest.raises(Malformed):
        sealer.seal([])
    with pytest.raises(Malformed):
        opener.open([])


class _Agent:
    """What a StreamIn asks of its agent: where to send credit (no direct socket here)."""

    direct = None

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def _send(self, frames: list[bytes]) -> None:
        self.sent.append(frames)


def _chunk(payload: list[bytes], sealed: bool) -> list[bytes]:
    from mesh.wire import Cmd, Flag, pack_route

    flags = Flag.RAW | (Flag.ENCRYPTED if sealed else 0)
    return [pack_route(Cmd.STREAM_DATA, flags, 0, 0, 7), b"crid", b"", *payload]


def test_an_end_to_end_stream_takes_plaintext_only_peer_to_peer() -> None:
    """Through the router every chunk of an e2e stream must be sealed; on the agent's own
    CURVE connection with the client (which ends in the two processes) it need not be."""
    import asyncio

    from agents.stream_in import StreamIn

    sealer, opener = _pair()

    async def main() -> list[bytes]:
        st = StreamIn(_Agent(), b"crid", 7, window=8, opener=opener)  # type: ignore[arg-type]
        st.push(_chunk([b"direct, plain"], sealed=False), direct=True)
        st.push(_chunk(sealer.seal([b"routed, sealed"]), sealed=True))
        st.push(_chunk(sealer.seal([b"direct, sealed"]), sealed=True), direct=True)
        st.push(_chunk([b"routed, plain"], sealed=False))
        got = [await st.__anext__() for _ in range(3)]
        with pytest.raises(Unauthenticated, match="plaintext chunk"):
            await st.__anext__()
        return got

    assert asyncio.run(main()) == [b"direct, plain", b"routed, sealed", b"direct, sealed"]
