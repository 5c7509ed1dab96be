"""The mDNS TXT codec and announcement parser, fed bytes directly (no network)."""

from __future__ import annotations

import pytest

from discovery.announcement import (
    MAX_TXT_BYTES,
    MAX_TXT_ENTRIES,
    announcement_txt,
    decode_txt,
    dns_label,
    encode_txt,
    host_label,
    parse_announcement,
)
from mesh.errors import ConfigError, Malformed, TooLarge


def txt(*entries: bytes) -> bytes:
    return b"".join(bytes((len(e),)) + e for e in entries)


def test_round_trip(key: str) -> None:
    data = announcement_txt(role="router", name="acme/routers/main", server_key=key,
                            version="0.1.0", mesh="lab", port=5555, pub_port=5556,
                            sub_port=5557)
    ann = parse_announcement("r1", data, port=9, addresses=["127.0.0.1", "192.0.2.7"])
    assert (ann.role, ann.name, ann.server_key, ann.mesh, ann.version) == (
        "router", "acme/routers/main", key, "lab", "0.1.0")
    assert ann.port == 5555  # the TXT router port wins over the SRV port
    assert ann.endpoint == "tcp://192.0.2.7:5555"  # a LAN address before loopback
    assert ann.pub_endpoint == "tcp://192.0.2.7:5556"
    assert ann.sub_endpoint == "tcp://192.0.2.7:5557"


def test_ipv6_only_and_srv_port(key: str) -> None:
    data = announcement_txt(role="agent", name="acme/ml/trainer", server_key=key)
    ann = parse_announcement("a", data, port=7000, addresses=["::1"])
    assert ann.endpoint == "tcp://[::1]:7000"
    assert ann.pub_endpoint is None


def test_decode_follows_rfc6763_rules() -> None:
    items = decode_txt(txt(b"Role=router", b"role=agent", b"flag", b"empty=", b"=nokey", b""))
    assert items == {"role": b"router", "flag": None, "empty": b""}  # first duplicate wins


@pytest.mark.parametrize(("data", "error"), [
    (b"\x05abc", Malformed),                              # runs past the end
    (txt(b"k\x01y=1"), Malformed),                        # control byte in key
    (txt(b"k" * 17 + b"=1"), TooLarge),                   # key over the cap
    (txt(*[b"k%d=1" % i for i in range(MAX_TXT_ENTRIES + 1)]), TooLarge),
    (b"\x00" * (MAX_TXT_BYTES + 1), TooLarge),
])
def test_decode_rejects_hostile_bytes(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_txt(data)


@pytest.mark.parametrize("entries", [
    (b"role=router", b"name=a", b"key=" + b"0" * 40),                      # no txtvers
    (b"txtvers=2", b"role=router", b"name=a", b"key=" + b"0" * 40),        # future txtvers
    (b"txtvers=1", b"role=king", b"name=a", b"key=" + b"0" * 40),
    (b"txtvers=1", b"role=router", b"name=A B", b"key=" + b"0" * 40),
    (b"txtvers=1", b"role=router", b"name=a", b"key=short"),
    (b"txtvers=1", b"role=router", b"name=a", b"key"),                     # key without value
    (b"txtvers=1", b"role=router", b"name=\xff", b"key=" + b"0" * 40),     # not UTF-8
    (b"txtvers=1", b"role=router", b"name=a", b"key=" + b"0" * 40, b"router=0"),
    (b"txtvers=1", b"role=router", b"name=a", b"key=" + b"0" * 40, b"pub=x"),
    (b"txtvers=1", b"role=router", b"name=a", b"key=" + b"0" * 40, b"mesh=UP"),
    (b"txtvers=1", b"role=router", b"name=a", b"key=" + b"0" * 40, b"ver=a b"),
])
def test_parse_announcement_rejects_bad_fields(entries: tuple[bytes, ...]) -> None:
    with pytest.raises(Malformed):
        parse_announcement("x", txt(*entries), port=5555, addresses=["127.0.0.1"])


def test_parse_announcement_needs_a_port_and_sane_addresses() -> None:
    good = (b"txtvers=1", b"role=router", b"name=a", b"key=" + b"0" * 40)
    with pytest.raises(Malformed):
        parse_announcement("x", txt(*good), port=None, addresses=["127.0.0.1"])
    with pytest.raises(Malformed):
        parse_announcement("x", txt(*good), port=1, addresses=["not-an-ip"])
    with pytest.raises(TooLarge):
        parse_announcement("x", txt(*good), port=1, addresses=["127.0.0.1"] * 17)
    with pytest.raises(Malformed):
        _ = parse_announcement("x", txt(*good), port=1, addresses=[]).endpoint


def test_our_own_bad_values_are_config_errors(key: str) -> None:
    with pytest.raises(ConfigError):
        announcement_txt(role="router", name="a", server_key="nope")
    with pytest.raises(ConfigError):
        announcement_txt(role="boss", name="a", server_key=key)
    with pytest.raises(ConfigError):
        announcement_txt(role="router", name="a", server_key=key, port=70000)
    with pytest.raises(ConfigError):
        encode_txt({"a=b": "1"})
    with pytest.raises(ConfigError):
        encode_txt({"k": "v" * 300})
    assert encode_txt({}) == b"\x00"  # RFC 6763 s6.1: an empty TXT is one empty string


def test_labels_fit_dns() -> None:
    long = "é" * 40  # 80 bytes of UTF-8
    label = dns_label(long)
    assert len(label.encode()) <= 63
    assert label == "é" * 31
    assert dns_label("a.b\x00c") == "a-bc"
    assert dns_label("\x01") == "agp"
    assert host_label("Ünïcode host.name") == "n-code-host-name"
    assert len(host_label("h" * 100)) == 63


def test_an_agent_announces_its_instance_and_no_port(key: str) -> None:
    data = announcement_txt(role="agent", name="acme/ml/trainer", server_key=key,
                            version="1.2", instance_id="host-42")
    ann = parse_announcement("acme-ml-trainer-host-42", data, port=0, addresses=["10.0.0.2"])
    assert (ann.role, ann.name, ann.instance_id, ann.port, ann.version) == (
        "agent", "acme/ml/trainer", "host-42", 0, "1.2")
    with pytest.raises(Malformed):  # an agent is reached through the router, not directly
        _ = ann.endpoint
    router = announcement_txt(role="router", name="acme/routers/main", server_key=key)
    with pytest.raises(Malformed):  # port 0 is an agent's only: a router must have a port
        parse_announcement("r", router, port=0, addresses=["10.0.0.1"])
    assert parse_announcement("r", router, port=7, addresses=["10.0.0.1"]).instance_id == ""


@pytest.mark.parametrize("inst", [b"inst=a/b", b"inst=" + b"i" * 65, b"inst=", b"inst"])
def test_a_bad_agent_instance_is_refused(inst: bytes) -> None:
    entries = (b"txtvers=1", b"role=agent", b"name=a/b/c", b"key=" + b"0" * 40, inst)
    with pytest.raises((Malformed, TooLarge)):
        parse_announcement("x", txt(*entries), port=0, addresses=["127.0.0.1"])


def test_our_own_bad_instance_is_a_config_error(key: str) -> None:
    with pytest.raises(ConfigError):
        announcement_txt(role="agent", name="a/b/c", server_key=key, instance_id="no/slash")
