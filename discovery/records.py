"""The registration record an agent sends to the registry, and its untrusted-input parser.

A registration arrives from the network as a msgpack-decoded dict, so every field is checked
here, once, with a cap on every length and count: a string or list over its cap raises
:class:`~mesh.errors.TooLarge`, anything of the wrong type or shape raises
:class:`~mesh.errors.Malformed`. Nothing else in ``discovery/`` re-validates a record, so a
:class:`Registration` is a value that can be trusted to be well-formed (not to be honest: the
registry still checks that the sender's key owns the instance).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from mesh.errors import Malformed, TooLarge

# Caps. A record must fit comfortably in one registry message; these bound the work and memory
# an untrusted registrant can cause.
MAX_NAME_LEN: Final = 255
MAX_SEGMENT_LEN: Final = 63
MAX_SEGMENTS: Final = 4
MAX_INSTANCE_LEN: Final = 64
MAX_CAPABILITIES: Final = 64
MAX_CAPABILITY_LEN: Final = 64
MAX_VERSION_LEN: Final = 32
MAX_ENDPOINTS: Final = 8
MAX_ENDPOINT_LEN: Final = 280
MAX_LABELS: Final = 32
MAX_LABEL_KEY_LEN: Final = 63
MAX_LABEL_VALUE_LEN: Final = 255
MAX_FIELDS: Final = 32
MAX_CAPACITY: Final = 1_000_000
MAX_WEIGHT: Final = 65_535
Z85_KEY_LEN: Final = 40

_SEGMENT_RE: Final = re.compile(r"[a-z0-9_-]+")
_INSTANCE_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
_CAPABILITY_RE: Final = re.compile(r"[A-Za-z0-9_.:-]+")
_VERSION_RE: Final = re.compile(r"[A-Za-z0-9.+_-]+")
_LABEL_KEY_RE: Final = re.compile(r"[a-z0-9_./-]+")
_HOSTNAME_RE: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_Z85_CHARS: Final = (
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" ".-:+=^!/*?&<>()[]{}@%$#"
)
_Z85_VALUE: Final = {c: i for i, c in enumerate(_Z85_CHARS)}


@dataclass(frozen=True, slots=True)
class Registration:
    """One instance of a service, as the registry holds it. Treat as immutable."""

    name: str
    instance: str
    public_key: str
    endpoints: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    version: str = "0"
    capacity: int = 1
    weight: int = 1
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        """The identity of the record in the table: (name, instance)."""
        return (self.name, self.instance)

    def validated(self) -> Registration:
        """This record checked as the registry will check it (for locally built records)."""
        return parse_registration(self.to_wire())

    def to_wire(self) -> dict[str, Any]:
        """The msgpack-ready dict that :func:`parse_registration` reads back."""
        return {
            "name": self.name,
            "instance": self.instance,
            "public_key": self.public_key,
            "endpoints": list(self.endpoints),
            "capabilities": list(self.capabilities),
            "version": self.version,
            "capacity": self.capacity,
            "weight": self.weight,
            "labels": dict(self.labels),
        }


def _err(cls: type[Malformed] | type[TooLarge], fname: str, message: str) -> Exception:
    return cls(f"{fname}: {message}", details={"field": fname})


def _string(value: object, fname: str, cap: int) -> str:
    if not isinstance(value, str):
        raise _err(Malformed, fname, f"expected a string, got {type(value).__name__}")
    if len(value) > cap:
        raise _err(TooLarge, fname, f"longer than {cap} characters")
    if not value:
        raise _err(Malformed, fname, "empty")
    return value


def _matching(value: object, fname: str, cap: int, pattern: re.Pattern[str]) -> str:
    text = _string(value, fname, cap)
    if not pattern.fullmatch(text):
        raise _err(Malformed, fname, f"{text!r} has characters outside {pattern.pattern}")
    return text


def _bounded_int(value: object, fname: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(Malformed, fname, f"expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise _err(Malformed, fname, f"{value} is outside {low}..{high}")
    return value


def _list(value: object, fname: str, cap: int) -> list[object]:
    if not isinstance(value, (list, tuple)):
        raise _err(Malformed, fname, f"expected a list, got {type(value).__name__}")
    if len(value) > cap:
        raise _err(TooLarge, fname, f"more than {cap} items")
    return list(value)


def check_name(value: object, fname: str = "name") -> str:
    """Validate a hierarchical name ``org/namespace/service[/instance]`` (1..4 segments)."""
    text = _string(value, fname, MAX_NAME_LEN)
    segments = text.split("/")
    if len(segments) > MAX_SEGMENTS:
        raise _err(Malformed, fname, f"more than {MAX_SEGMENTS} segments")
    for seg in segments:
        if len(seg) > MAX_SEGMENT_LEN:
            raise _err(TooLarge, fname, f"segment longer than {MAX_SEGMENT_LEN} characters")
        if not _SEGMENT_RE.fullmatch(seg):
            raise _err(Malformed, fname, f"segment {seg!r} is empty or not [a-z0-9_-]")
    return text


def check_instance(value: object, fname: str = "instance") -> str:
    """Validate an instance id: 1..64 of ``[A-Za-z0-9_.-]`` (no '/': it ends a name)."""
    return _matching(value, fname, MAX_INSTANCE_LEN, _INSTANCE_RE)


def check_z85_key(value: object, fname: str = "public_key") -> str:
    """Validate a Curve25519 public key in Z85 text form (40 characters, 32 bytes)."""
    text = _string(value, fname, Z85_KEY_LEN)
    if len(text) != Z85_KEY_LEN:
        raise _err(Malformed, fname, f"a Z85 key is {Z85_KEY_LEN} characters, not {len(text)}")
    for i in range(0, Z85_KEY_LEN, 5):
        acc = 0
        for ch in text[i : i + 5]:
            digit = _Z85_VALUE.get(ch)
            if digit is None:
                raise _err(Malformed, fname, f"{ch!r} is not a Z85 character")
            acc = acc * 85 + digit
        if acc > 0xFFFFFFFF:
            raise _err(Malformed, fname, "a Z85 group overflows 32 bits")
    return text


def check_endpoint(value: object, fname: str = "endpoints") -> str:
    """Validate a connectable ``tcp://host:port`` endpoint (IPv4, [IPv6] or a DNS name)."""
    text = _string(value, fname, MAX_ENDPOINT_LEN)
    if not text.startswith("tcp://"):
        raise _err(Malformed, fname, f"{text!r} is not tcp://host:port")
    host, sep, port_text = text[len("tcp://") :].rpartition(":")
    if not sep or not host or not port_text.isascii() or not port_text.isdigit():
        raise _err(Malformed, fname, f"{text!r} is not tcp://host:port")
    if len(port_text) > 5 or not 1 <= int(port_text) <= 65535:
        raise _err(Malformed, fname, f"port out of range in {text!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _err(Malformed, fname, f"bad IPv6 address in {text!r}")
        return text
    if len(host) > 253 or not all(_HOSTNAME_RE.fullmatch(label) for label in host.split(".")):
        raise _err(Malformed, fname, f"bad host in {text!r}")
    return text


def _labels(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise _err(Malformed, "labels", f"expected a map, got {type(value).__name__}")
    if len(value) > MAX_LABELS:
        raise _err(TooLarge, "labels", f"more than {MAX_LABELS} labels")
    out: dict[str, str] = {}
    for k, v in value.items():
        key = _matching(k, "labels", MAX_LABEL_KEY_LEN, _LABEL_KEY_RE)
        if not isinstance(v, str):
            raise _err(Malformed, "labels", f"value of {key!r} is not a string")
        if len(v) > MAX_LABEL_VALUE_LEN:
            raise _err(TooLarge, "labels", f"value of {key!r} longer than {MAX_LABEL_VALUE_LEN}")
        if not v.isprintable():
            raise _err(Malformed, "labels", f"value of {key!r} has control characters")
        out[key] = v
    return out


def parse_registration(obj: object) -> Registration:
    """Build a :class:`Registration` from an untrusted msgpack-decoded dict.

    Raises only :class:`~mesh.errors.Malformed` or :class:`~mesh.errors.TooLarge`; unknown
    fields are ignored (forward compatibility) but count toward :data:`MAX_FIELDS`.
    """
    if not isinstance(obj, Mapping):
        raise _err(Malformed, "registration", f"expected a map, got {type(obj).__name__}")
    if len(obj) > MAX_FIELDS:
        raise _err(TooLarge, "registration", f"more than {MAX_FIELDS} fields")
    for k in obj:
        if not isinstance(k, str):
            raise _err(Malformed, "registration", "field names must be strings")

    def need(fname: str) -> object:
        if fname not in obj:
            raise _err(Malformed, fname, "missing")
        return obj[fname]

    name = check_name(need("name"))
    instance = check_instance(need("instance"))
    public_key = check_z85_key(need("public_key"))
    endpoints = tuple(check_endpoint(e) for e in _list(obj.get("endpoints", []), "endpoints",
                                                        MAX_ENDPOINTS))
    caps_raw = _list(obj.get("capabilities", []), "capabilities", MAX_CAPABILITIES)
    capabilities = tuple(dict.fromkeys(
        _matching(c, "capabilities", MAX_CAPABILITY_LEN, _CAPABILITY_RE) for c in caps_raw
    ))
    version = _matching(obj.get("version", "0"), "version", MAX_VERSION_LEN, _VERSION_RE)
    capacity = _bounded_int(obj.get("capacity", 1), "capacity", 0, MAX_CAPACITY)
    weight = _bounded_int(obj.get("weight", 1), "weight", 0, MAX_WEIGHT)
    labels = _labels(obj.get("labels", {}))
    return Registration(
        name=name, instance=instance, public_key=public_key, endpoints=endpoints,
        capabilities=capabilities, version=version, capacity=capacity, weight=weight,
        labels=labels,
    )
