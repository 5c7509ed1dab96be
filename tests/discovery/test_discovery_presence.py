"""An agent's mDNS side when it must stay quiet: no browse, no announcement, no thread."""

from __future__ import annotations

import threading

import zmq

from discovery.presence import AgentPresence, lan_router
from mesh.core import Security


def security() -> Security:
    public, secret = zmq.curve_keypair()
    return Security(public, secret, zmq.curve_keypair()[0])


def test_no_browse_when_off_or_insecure() -> None:
    # each returns at once: a browse would cost its full timeout before giving up
    assert lan_router(security(), env={"AGP_MDNS": "0"}, timeout=30) is None
    assert lan_router(security(), enabled=False, timeout=30) is None
    assert lan_router(None, env={"AGP_MDNS": "1"}, timeout=30) is None  # no key to check


def test_presence_off_starts_nothing() -> None:
    before = threading.active_count()
    for presence in (AgentPresence(enabled=False), AgentPresence(env={"AGP_MDNS": "off"})):
        assert presence.start(service="a/b/c", instance="i1",
                              public_key=zmq.curve_keypair()[0].decode()) is False
        assert threading.active_count() == before
        presence.close()
        assert not presence.announced.is_set()


def test_a_version_mdns_cannot_carry_leaves_the_agent_unannounced() -> None:
    presence = AgentPresence(env={"AGP_MDNS": "1"})
    assert presence.start(service="a/b/c", instance="i1", version="not a version!",
                          public_key=zmq.curve_keypair()[0].decode()) is False
    presence.close()
