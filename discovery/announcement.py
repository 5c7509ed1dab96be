"""What a mesh process announces over mDNS, and the TXT record codec (RFC 6763), sans-IO.

A TXT record is a run of length-prefixed ``key=value`` strings (RFC 6763 s6). Anything can
be multicast onto a LAN, so :func:`decode_txt` and :func:`parse_announcement` treat the bytes
as hostile: caps on total size, entry count and key length; keys are printable ASCII without
'=' and compared case-insensitively; the first of duplicate keys wins and the rest are
ignored (s6.4); values of the fields we use are checked like registry fields. They raise only
:class:`~mesh.errors.Malformed` or :class:`~mesh.errors.TooLarge`; the mDNS layer counts and
drops. An announced key is a claim, not a credential: see :func:`discovery.mdns.find_router`.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from discovery.records import check_instance, check_name, check_z85_key
from mesh.errors import ConfigError, Malformed, TooLarge

SERVICE_TYPE: Final = "_agp._tcp.local."
TXT_VERSION: Final = "1"
ROLES: Final = frozenset({"router", "agent", "control"})

MAX_TXT_BYTES: Final = 2048  # RFC 6763 s6.2 advises <= 1300 in one packet; allow headroom
MAX_TXT_ENTRIES: Final = 32
MAX_TXT_KEY_LEN: Final = 16  # RFC 6763 s6.4 recommends <= 9; ours are
MAX_TXT_ENTRY_LEN: Final = 255
MAX_LABEL_BYTES: Final = 63  # one DNS label (RFC 1035 s2.3.4, RFC 6763 s4.1.1)
MAX_ADDRESSES: Final = 16
MAX_VERSION_LEN: Final = 32

_MESH_RE: Final = re.compile(r"[a-z0-9_-]{1,63}")
_VERSION_RE: Final = re.compile(r"[A-Za-z0-9.+_-]{1,32}")
_HOST_BAD_RE: Final = re.compile(r"[^A-Za-z0-9-]+")


@dataclass(frozen=True, slots=True)
class Announcement:
    """One announced mesh process; for a router, ``port`` is its ROUTER socket's port."""

    instance: str
    role: str
    name: str
    server_key: str
    port: int
    addresses: tuple[str, ...] = ()
    version: str = "0"
    mesh: str = "default"
    pub_port: int | None = None
    sub_port: int | None = None
    instance_id: str = ""  # an agent's instance id (TXT ``inst``); reach it as name/instance_id
    reached: str = ""  # the address that answered a probe (discovery.reach); else the preferred

    def _endpoint(self, port: int | None) -> str | None:
        if not port or not self.addresses:
            return None
        host = self.reached or _preferred_address(self.addresses)
        return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"

    @property
    def endpoint(self) -> str:
        """``tcp://host:port`` of the main socket (the ROUTER socket for a router)."""
        ep = self._endpoint(self.port)
        if ep is None:
            raise Malformed(f"announcement {self.instance!r} has no address or no port")
        return ep

    @property
    def pub_endpoint(self) -> str | None:
        """Where publishers connect (the proxy's XSUB socket), if announced."""
        return self._endpoint(self.pub_port)

    @property
    def sub_endpoint(self) -> str | None:
        """Where subscribers connect (the proxy's XPUB socket), if announced."""
        return self._endpoint(self.sub_port)


RouterInfo = Announcement
"""What :func:`discovery.mdns.browse_routers` returns: an announcement with role router."""


def candidate_addresses(addresses: Sequence[str]) -> list[str]:
    """The addresses in the order to try them: LAN IPv4 (reaches us from other hosts), then
    loopback IPv4 (only from this one), then IPv6; announced order within each."""
    def rank(addr: str) -> int:
        if ":" in addr:
            return 2
        return 1 if ipaddress.ip_address(addr).is_loopback else 0

    return sorted(addresses, key=rank)  # stable: announced order kept within a rank


def _preferred_address(addresses: Sequence[str]) -> str:
    return candidate_addresses(addresses)[0]


def dns_label(text: str) -> str:
    """A DNS-SD instance label from free text: no control characters, no dots, <= 63 bytes."""
    cleaned = "".join(
        "-" if ch == "." else ch for ch in text if unicodedata.category(ch)[0] != "C"
    ).strip() or "agp"
    raw = cleaned.encode("utf-8")[:MAX_LABEL_BYTES]
    return raw.decode("utf-8", errors="ignore")


def host_label(text: str) -> str:
    """An RFC 1123 host label (letters, digits, hyphen; <= 63) for the SRV target."""
    label = _HOST_BAD_RE.sub("-", text).strip("-")[:MAX_LABEL_BYTES].strip("-")
    return label or "agp"


def encode_txt(items: Mapping[str, str | None]) -> bytes:
    """Encode our own TXT entries; a bad key or oversized entry is a :class:`ConfigError`."""
    out = bytearray()
    for key, value in items.items():
        if not key or len(key) > MAX_TXT_KEY_LEN or "=" in key or not _printable_ascii(key):
            raise ConfigError(f"TXT key {key!r} is not 1..{MAX_TXT_KEY_LEN} printable ASCII")
        entry = key.encode() if value is None else f"{key}={value}".encode()
        if len(entry) > MAX_TXT_ENTRY_LEN:
            raise ConfigError(f"TXT entry {key!r} is longer than {MAX_TXT_ENTRY_LEN} bytes")
        out += bytes((len(entry),)) + entry
    return bytes(out) or b"\x00"


def decode_txt(data: bytes) -> dict[str, bytes | None]:
    """Decode untrusted TXT bytes into lower-cased keys; a key alone has value None."""
    if len(data) > MAX_TXT_BYTES:
        raise TooLarge(f"TXT record of {len(data)} bytes", details={"field": "txt"})
    items: dict[str, bytes | None] = {}
    pos = 0
    entries = 0
    while pos < len(data):  # bounded: pos grows by >= 1 each pass
        length = data[pos]
        end = pos + 1 + length
        if end > len(data):
            raise Malformed("TXT entry runs past the record", details={"field": "txt"})
        entry = data[pos + 1 : end]
        pos = end
        if not entry:
            continue
        entries += 1
        if entries > MAX_TXT_ENTRIES:
            raise TooLarge(f"more than {MAX_TXT_ENTRIES} TXT entries", details={"field": "txt"})
        raw_key, sep, value = entry.partition(b"=")
        if not raw_key:
            continue  # RFC 6763 s6.4: an entry without a key is silently ignored
        if len(raw_key) > MAX_TXT_KEY_LEN:
            raise TooLarge("TXT key too long", details={"field": "txt"})
        if not all(0x20 <= b <= 0x7E for b in raw_key):
            raise Malformed("TXT key is not printable ASCII", details={"field": "txt"})
        key = raw_key.decode("ascii").lower()
        if key not in items:
            items[key] = value if sep else None
    return items


def announcement_txt(*, role: str, name: str, server_key: str, version: str = "0",
                     mesh: str = "default", port: int | None = None,
                     pub_port: int | None = None, sub_port: int | None = None,
                     instance_id: str | None = None) -> bytes:
    """The TXT record for an announcement, validated as :func:`parse_announcement` will."""
    try:
        if role not in ROLES:
            raise Malformed(f"role must be one of {sorted(ROLES)}")
        check_name(name)
        if instance_id is not None:
            check_instance(instance_id, "inst")
        check_z85_key(server_key, "server_key")
        _check_text(version, _VERSION_RE, "ver")
        _check_text(mesh, _MESH_RE, "mesh")
        for p in (port, pub_port, sub_port):
            if p is not None:
                _check_port(str(p), "port")
    except (Malformed, TooLarge) as exc:
        raise ConfigError(f"bad announcement: {exc.message}")
    items: dict[str, str | None] = {
        "txtvers": TXT_VERSION, "role": role, "name": name, "key": server_key,
        "ver": version, "mesh": mesh,
    }
    if instance_id is not None:
        items["inst"] = instance_id
    for key, p in (("router", port), ("pub", pub_port), ("sub", sub_port)):
        if p is not None:
            items[key] = str(p)
    return encode_txt(items)


def parse_announcement(instance: str, txt: bytes, *, port: int | None,
                       addresses: Sequence[str] = ()) -> Announcement:
    """Build an :class:`Announcement` from untrusted resolved records (SRV port, A/AAAA, TXT)."""
    items = decode_txt(txt)
    if items.get("txtvers") != TXT_VERSION.encode():
        raise Malformed("unsupported or missing txtvers", details={"field": "txtvers"})
    role = _text(items, "role")
    if role not in ROLES:
        raise Malformed(f"unknown role {role!r:.40}", details={"field": "role"})
    name = check_name(_text(items, "name"))
    server_key = check_z85_key(_text(items, "key"), "key")
    version = _check_text(_text(items, "ver", "0"), _VERSION_RE, "ver")
    mesh = _check_text(_text(items, "mesh", "default"), _MESH_RE, "mesh")
    main_port = _check_port(_text(items, "router"), "router") if "router" in items else port
    # an agent listens on nothing (it is reached through the router): SRV port 0 is allowed
    low = 0 if role == "agent" else 1
    if main_port is None or not low <= main_port <= 65535:
        raise Malformed("no usable port", details={"field": "port"})
    instance_id = check_instance(_text(items, "inst"), "inst") if "inst" in items else ""
    if len(addresses) > MAX_ADDRESSES:
        raise TooLarge(f"more than {MAX_ADDRESSES} addresses", details={"field": "addresses"})
    try:
        addrs = tuple(str(ipaddress.ip_address(a)) for a in addresses)
    except ValueError:
        raise Malformed("bad address", details={"field": "addresses"})
    return Announcement(
        instance=instance, role=role, name=name, server_key=server_key, port=main_port,
        addresses=addrs, version=version, mesh=mesh,
        pub_port=_check_port(_text(items, "pub"), "pub") if "pub" in items else None,
        sub_port=_check_port(_text(items, "sub"), "sub") if "sub" in items else None,
        instance_id=instance_id,
    )


def _printable_ascii(text: str) -> bool:
    return all(0x20 <= ord(ch) <= 0x7E for ch in text)


def _text(items: Mapping[str, bytes | None], key: str, default: str | None = None) -> str:
    value = items.get(key)
    if value is None:
        if default is not None and key not in items:
            return default
        raise Malformed(f"TXT {key!r} missing or without a value", details={"field": key})
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed(f"TXT {key!r} is not UTF-8", details={"field": key})


def _check_text(value: str, pattern: re.Pattern[str], fname: str) -> str:
    if not pattern.fullmatch(value):
        raise Malformed(f"TXT {fname!r} is not {pattern.pattern}", details={"field": fname})
    return value


def _check_port(text: str, fname: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and 1 <= int(text) <= 65535):
        raise Malformed(f"TXT {fname!r} is not a port", details={"field": fname})
    return int(text)
