"""ZAP: the sans-IO policy, then real CURVE sockets on 127.0.0.1 through ZapServer."""

from __future__ import annotations

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import ConfigError, Unauthenticated
from security import keys
from security.trust import TrustStore
from security.zap import (
    ZAP_VERSION,
    ZapNotRunning,
    ZapPolicy,
    ZapServer,
    curve_client,
    curve_server,
    peer_key,
    require_zap,
)


@pytest.fixture
def trust(tmp_path):
    return TrustStore(tmp_path / "trust")


@pytest.fixture
def client_keys(trust):
    pair = keys.generate()
    trust.enroll("client", pair.public)
    return pair


def request(mechanism=b"CURVE", credentials=(), version=ZAP_VERSION, rid=b"7"):
    return [version, rid, b"agp", b"127.0.0.1", b"", mechanism, *credentials]


# ---- the policy, fed with frames ----------------------------------------------------------

class TestZapPolicy:
    def test_accepts_enrolled_curve_key_with_z85_user_id(self, trust, client_keys):
        reply = ZapPolicy(trust).handle(request(credentials=[client_keys.public_raw]))
        assert reply[:5] == [ZAP_VERSION, b"7", b"200", b"OK", client_keys.public]
        assert b"X-Agp-Name" in reply[5]
        assert reply[5].endswith(b"client")

    def test_refuses_null_mechanism(self, trust):
        reply = ZapPolicy(trust).handle(request(mechanism=b"NULL"))
        assert reply[2:5] == [b"400", b"mechanism not allowed", b""]

    def test_refuses_plain_mechanism(self, trust):
        reply = ZapPolicy(trust).handle(request(mechanism=b"PLAIN", credentials=[b"u", b"p"]))
        assert reply[2] == b"400"

    def test_refuses_unknown_key(self, trust):
        reply = ZapPolicy(trust).handle(request(credentials=[keys.generate().public_raw]))
        assert reply[2:4] == [b"400", b"unknown key"]

    def test_a_key_enrolled_elsewhere_since_is_let_in_and_unknown_keys_scan_nothing(
            self, trust, tmp_path, monkeypatch):
        policy = ZapPolicy(trust)
        scans = []
        real = trust._signature
        monkeypatch.setattr(trust, "_signature", lambda: scans.append(1) or real())
        for _ in range(50):  # strangers: no file of the trusted directory read for them
            assert policy.handle(request(credentials=[keys.generate().public_raw]))[2] == b"400"
        assert scans == []
        late = keys.generate()
        TrustStore(tmp_path / "trust").enroll("late", late.public)  # `agp keys new`, elsewhere
        assert policy.handle(request(credentials=[late.public_raw]))[2] == b"200"
        assert len(scans) == 1

    def test_refuses_revoked_key(self, trust, client_keys):
        trust.revoke("client")
        policy = ZapPolicy(trust)
        assert policy.handle(request(credentials=[client_keys.public_raw]))[2:4] == [
            b"400", b"revoked key"]
        assert policy.stats["refused:revoked key"] == 1
        assert policy.stats["accepted"] == 0

    @pytest.mark.parametrize("frames", [
        [], [b"1.0"], [b"1.0", b"id"], request()[:5],
        request(version=b"2.0", credentials=[b"k" * 32]),
        request(credentials=[b"short"]),
        request(credentials=[b"k" * 32, b"extra"]),
        request(credentials=[b"k" * 5000]),
        [b"x"] * 40,
    ])
    def test_malformed_requests_get_a_400_reply_never_a_crash(self, trust, frames):
        reply = ZapPolicy(trust).handle(frames)
        assert len(reply) == 6
        assert reply[0] == ZAP_VERSION
        assert reply[2] == b"400"
        assert reply[4] == b""

    def test_domain_restriction(self, trust, client_keys):
        policy = ZapPolicy(trust, domains=["other"])
        assert policy.handle(request(credentials=[client_keys.public_raw]))[2:4] == [
            b"400", b"unknown domain"]

    def test_trust_lookup_failure_is_a_500_refusal(self):
        class Broken:
            def is_revoked(self, key):
                raise OSError("disk gone")
        reply = ZapPolicy(Broken()).handle(request(credentials=[b"k" * 32]))  # type: ignore[arg-type]
        assert reply[2] == b"500"
        assert reply[4] == b""

    @settings(max_examples=200, deadline=None, database=None)
    @given(st.lists(st.binary(max_size=64), max_size=10))
    def test_fuzzed_frames_always_get_a_refusal(self, tmp_path_factory, frames):
        store = TrustStore(tmp_path_factory.mktemp("fuzz"))
        reply = ZapPolicy(store).handle(frames)
        assert len(reply) == 6
        assert reply[2] in (b"400", b"500")
        assert reply[4] == b""


# ---- real sockets -------------------------------------------------------------------------

@pytest.fixture
def zap(zctx, trust):
    server = ZapServer(zctx, ZapPolicy(trust))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_trusted_client_connects_and_is_identified_by_its_key(zap, make_pair, server_keys,
                                                              client_keys):
    require_zap(zap.context)
    pair = make_pair(lambda s: curve_server(s, server_keys),
                     lambda c: curve_client(c, client_keys, server_keys.public))
    frames = pair.roundtrip(b"hello")
    assert frames[1].bytes == b"hello"
    assert peer_key(frames[1]) == client_keys.public
    assert frames[1].get("X-Agp-Name") == "client"
    assert zap.policy.stats["accepted"] == 1


def test_unknown_client_key_is_refused(zap, make_pair, server_keys):
    stranger = keys.generate()
    pair = make_pair(lambda s: curve_server(s, server_keys),
                     lambda c: curve_client(c, stranger, server_keys.public))
    pair.try_send(b"let me in")
    ev = pair.server_mon.wait_for(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    assert ev["value"] == 400
    pair.client_mon.wait_for(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    assert pair.server.poll(0) == 0
    assert zap.policy.stats["refused:unknown key"] >= 1


def test_wrong_server_key_is_refused(zap, make_pair, server_keys, client_keys):
    impostor = keys.generate()
    pair = make_pair(lambda s: curve_server(s, server_keys),
                     lambda c: curve_client(c, client_keys, impostor.public))
    pair.try_send(b"for the real server")
    ev = pair.server_mon.wait_for(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    assert ev["value"] == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC
    assert pair.server.poll(0) == 0


def test_client_without_curve_is_refused(zap, make_pair, server_keys):
    pair = make_pair(lambda s: curve_server(s, server_keys), lambda c: None)
    pair.try_send(b"plaintext")
    ev = pair.server_mon.wait_for(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    assert ev["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    assert pair.server.poll(0) == 0


def test_null_mechanism_refused_by_zap_even_on_a_misconfigured_server(zap, make_pair):
    def null_server(s):
        s.zap_domain = b"agp"  # a NULL socket with a domain asks ZAP: ZAP must say no
    pair = make_pair(null_server, lambda c: None)
    pair.try_send(b"plaintext")
    ev = pair.server_mon.wait_for(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    assert ev["value"] == 400
    assert pair.server.poll(0) == 0
    assert zap.policy.stats["refused:mechanism not allowed"] >= 1


def test_revoked_key_cannot_open_a_new_connection(zap, trust, make_pair, server_keys,
                                                  client_keys):
    first = make_pair(lambda s: curve_server(s, server_keys),
                      lambda c: curve_client(c, client_keys, server_keys.public))
    assert first.roundtrip()[1].bytes == b"ping"
    TrustStore(trust.directory).revoke("client")  # e.g. `agp keys revoke` elsewhere
    assert trust.refresh() == frozenset({client_keys.public})
    second = make_pair(lambda s: curve_server(s, server_keys),
                       lambda c: curve_client(c, client_keys, server_keys.public))
    second.try_send(b"again")
    second.server_mon.wait_for(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    assert second.server.poll(0) == 0
    assert zap.policy.stats["refused:revoked key"] >= 1


def test_without_a_zap_handler_servers_refuse_to_start_and_libzmq_fails_closed(
        zctx, make_pair, server_keys):
    with pytest.raises(ZapNotRunning):
        require_zap(zctx, timeout=0.5)
    anyone = keys.generate()
    pair = make_pair(lambda s: curve_server(s, server_keys),
                     lambda c: curve_client(c, anyone, server_keys.public))
    pair.try_send(b"no handler")
    pair.server_mon.wait_for(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                             zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    assert pair.server.poll(0) == 0


def test_require_zap_refuses_a_handler_that_accepts_null(zctx):
    class AcceptAll:
        def handle(self, frames):
            return [ZAP_VERSION, frames[1], b"200", b"OK", b"anyone", b""]
    server = ZapServer(zctx, AcceptAll())  # type: ignore[arg-type]
    with server:
        with pytest.raises(ZapNotRunning, match="NULL"):
            require_zap(zctx)


def test_zap_server_lifecycle(zctx, trust):
    server = ZapServer(zctx, ZapPolicy(trust))
    assert not server.running
    server.start()
    try:
        assert server.running
        with pytest.raises(ConfigError, match="already"):
            server.start()
        second = ZapServer(zctx, ZapPolicy(trust))
        with pytest.raises(ConfigError, match="cannot bind"):
            second.start()
        assert not second.running
    finally:
        server.stop()
    assert not server.running
    with ZapServer(zctx, ZapPolicy(trust)) as again:  # the endpoint is free again
        assert again.running
        require_zap(zctx)


def test_peer_key_refuses_unauthenticated_frames():
    with pytest.raises(Unauthenticated):
        peer_key(zmq.Frame(b"no metadata"))


def test_a_failing_policy_refuses_instead_of_hanging(zctx, make_pair, server_keys):
    class Exploding:
        def handle(self, frames):
            raise RuntimeError("bug in a custom policy")
    with ZapServer(zctx, Exploding()) as server:  # type: ignore[arg-type]
        anyone = keys.generate()
        pair = make_pair(lambda s: curve_server(s, server_keys),
                         lambda c: curve_client(c, anyone, server_keys.public))
        pair.try_send(b"x")
        ev = pair.server_mon.wait_for(zmq.EVENT_HANDSHAKE_FAILED_AUTH,
                                      zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        assert pair.server.poll(0) == 0
        assert server.running  # still serving after the error
        assert ev["event"] in (zmq.EVENT_HANDSHAKE_FAILED_AUTH,
                               zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
