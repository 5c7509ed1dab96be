"""Role-based access control, sans-IO: deny by default, deny beats allow.

Policy file (``configs/rbac/policies.json``)::

    {
      "version": 1,
      "roles": {
        "agent": {
          "description": "serve and register in its own namespace",
          "allow": [{"actions": ["register", "stream", "send"], "names": ["{ns}/**"]}],
          "deny":  [{"actions": ["publish"], "topics": ["alerts.>"]}]
        }
      },
      "bindings": [
        {"subject": "ml_trainer", "roles": ["agent"], "vars": {"ns": "acme/ml"}},
        {"key": "<z85 CURVE public key>", "roles": ["admin"]}
      ]
    }

* Actions: ``request send publish subscribe stream register admin``, or ``"*"`` for all.
  ``publish``/``subscribe`` take dotted topics; the others take ``/`` names
  (see :mod:`security.patterns` for ``*`` and a trailing ``**`` / ``>``). A rule gives its
  patterns under ``names`` or ``topics`` (same meaning; pick the one that reads well).
* A binding gives roles to a token ``sub`` (``subject``) or to a CURVE ``key`` (z85). Its
  ``vars`` fill ``{var}`` placeholders in the roles' patterns, so one ``agent`` role serves
  every namespace. Var values may not hold wildcards. Roles carried in a token's ``roles``
  claim (set by the operator in the client registry) count too, except roles that need vars.
* Unknown members, actions, roles or malformed patterns make the whole file invalid
  (:class:`ConfigError`); :class:`PolicyStore` then keeps serving the previous policy.
* ``register`` is checked on the SERVICE name ``org/ns/service`` (an instance suffix is
  stripped), so the right to register is the right on the namespace: ``org/ns/*``.
* Prefix subscriptions (ZeroMQ matches raw byte prefixes): a prefix is allowed only if ONE
  allow pattern matches every topic that could start with it and no deny pattern matches any
  of them (sound, never permissive; a prefix covered only by a union of rules is refused).
  A prefix ending in ``TOPIC_END`` (NUL) is an exact-topic subscription, for wires that end
  the topic frame with it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from mesh.errors import ConfigError, Forbidden, Malformed
from mesh.wire import MAX_ADDRESS_BYTES
from security.keys import file_signature

from .patterns import NAME_SEP, TOPIC_SEP, Pattern, parse_pattern, split_name, split_prefix

__all__ = ["ACTIONS", "TOPIC_END", "Decision", "Policy", "PolicyStore", "Principal",
           "load_policy"]

log = logging.getLogger("agp.security.rbac")

ACTIONS: Final = ("request", "send", "publish", "subscribe", "stream", "register", "admin")
TOPIC_ACTIONS: Final = frozenset({"publish", "subscribe"})
TOPIC_END: Final = "\x00"
MAX_POLICY_BYTES: Final = 1024 * 1024
MAX_CACHE: Final = 100_000
_ROLE_RE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_VAR_RE: Final = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_PREFIX_ACTION: Final = "subscribe-prefix"


@dataclass(frozen=True)
class Principal:
    """Who asks: a token subject, a CURVE key (z85 text), and roles from the token."""

    sub: str | None = None
    key: str | None = None
    roles: tuple[str, ...] = ()
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.key, (bytes, bytearray)):
            object.__setattr__(self, "key", bytes(self.key).decode("ascii", "replace"))
        object.__setattr__(self, "roles", tuple(self.roles))
        object.__setattr__(self, "_hash", hash((self.sub, self.key, self.roles)))

    def __hash__(self) -> int:  # computed once: principals are cache keys on the hot path
        return self._hash


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    malformed: bool = False

    def __bool__(self) -> bool:
        return self.allowed


_NO_RULE: Final = Decision(False, "no rule allows it (deny by default)")
_UNKNOWN_ACTION: Final = Decision(False, "unknown action", malformed=True)

# per action: (allow, deny) tuples of (role, pattern)
_Rules = dict[str, tuple[tuple[tuple[str, Pattern], ...], tuple[tuple[str, Pattern], ...]]]


def _expand(text: str, variables: Mapping[str, str], where: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in variables:
            raise ConfigError(f"{where}: pattern {text!r} needs var {m.group(1)!r}")
        return variables[m.group(1)]
    return _VAR_RE.sub(sub, text)


def _check_keys(obj: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} must be an object")
    unknown = set(obj) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown member(s) {sorted(unknown)}")
    return obj


def _str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a non-empty list of strings")
    return value


class Policy:
    """A compiled policy document; immutable apart from its decision cache."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        doc = _check_keys(doc, {"version", "description", "roles", "bindings"}, "policy")
        if doc.get("version") != 1:
            raise ConfigError("policy: version must be 1")
        roles = doc.get("roles", {})
        if not isinstance(roles, dict):
            raise ConfigError("roles must be an object")
        self._roles: dict[str, list[tuple[str, list[str], list[str]]]] = {}
        for name, spec in roles.items():
            if not _ROLE_RE.fullmatch(name):
                raise ConfigError(f"invalid role name {name!r}")
            spec = _check_keys(spec, {"description", "allow", "deny"}, f"role {name!r}")
            rules = []
            for effect in ("allow", "deny"):
                listed = spec.get(effect, [])
                if not isinstance(listed, list):
                    raise ConfigError(f"role {name!r} {effect} must be a list")
                for i, rule in enumerate(listed):
                    where = f"role {name!r} {effect}[{i}]"
                    rule = _check_keys(rule, {"actions", "names", "topics", "description"},
                                       where)
                    if ("names" in rule) == ("topics" in rule):
                        raise ConfigError(f"{where}: give exactly one of 'names' or 'topics'")
                    actions = _str_list(rule.get("actions"), f"{where} actions")
                    bad = set(actions) - set(ACTIONS) - {"*"}
                    if bad:
                        raise ConfigError(f"{where}: unknown action(s) {sorted(bad)}")
                    expanded = list(ACTIONS) if "*" in actions else actions
                    patterns = _str_list(rule.get("names", rule.get("topics")), where)
                    rules.append((effect, expanded, patterns))
            self._roles[name] = rules
        # roles usable straight from a token: those without {vars}
        self._plain: dict[str, _Rules] = {}
        for name in self._roles:
            if not any(_VAR_RE.search(p) for _, _, ps in self._roles[name] for p in ps):
                self._plain[name] = self._compile([name], {}, f"role {name!r}")
        self._by_subject: dict[str, list[_Rules]] = {}
        self._by_key: dict[str, list[_Rules]] = {}
        bindings = doc.get("bindings", [])
        if not isinstance(bindings, list):
            raise ConfigError("bindings must be a list")
        for i, b in enumerate(bindings):
            where = f"bindings[{i}]"
            b = _check_keys(b, {"subject", "key", "roles", "vars", "description"}, where)
            if ("subject" in b) == ("key" in b):
                raise ConfigError(f"{where}: give exactly one of 'subject' or 'key'")
            who = b.get("subject", b.get("key"))
            if not isinstance(who, str) or not who:
                raise ConfigError(f"{where}: identity must be a non-empty string")
            variables = b.get("vars", {})
            if not isinstance(variables, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) and v
                    and not re.search(r"[*>{}\s]", v) for k, v in variables.items()):
                raise ConfigError(f"{where}: vars must map names to wildcard-free strings")
            compiled = self._compile(_str_list(b.get("roles"), f"{where} roles"), variables,
                                     where)
            target = self._by_subject if "subject" in b else self._by_key
            target.setdefault(who, []).append(compiled)
        self._cache: dict[tuple[Any, str, str], Decision] = {}
        self._rules_cache: dict[Any, _Rules] = {}

    def _compile(self, roles: Iterable[str], variables: Mapping[str, str], where: str) -> _Rules:
        acc: dict[str, tuple[list[tuple[str, Pattern]], list[tuple[str, Pattern]]]] = {
            a: ([], []) for a in ACTIONS}
        for role in roles:
            if role not in self._roles:
                raise ConfigError(f"{where}: unknown role {role!r}")
            for effect, actions, patterns in self._roles[role]:
                for action in actions:
                    sep = TOPIC_SEP if action in TOPIC_ACTIONS else NAME_SEP
                    for text in patterns:
                        try:
                            pat = parse_pattern(_expand(text, variables, where), sep)
                        except ConfigError as exc:
                            raise ConfigError(
                                f"{where} role {role!r} {action}: {exc.message}") from None
                        acc[action][0 if effect == "allow" else 1].append((role, pat))
        return {a: (tuple(al), tuple(de)) for a, (al, de) in acc.items()}

    # ---- questions ------------------------------------------------------------------------

    def rules_for(self, who: Principal | str) -> _Rules:
        rules = self._rules_cache.get(who)
        if rules is None:
            parts: list[_Rules] = []
            if isinstance(who, str):
                parts += self._by_subject.get(who, []) + self._by_key.get(who, [])
            else:
                if who.sub is not None:
                    parts += self._by_subject.get(who.sub, [])
                if who.key is not None:
                    parts += self._by_key.get(who.key, [])
                parts += [self._plain[r] for r in who.roles if r in self._plain]
            rules = {a: (tuple(x for p in parts for x in p[a][0]),
                         tuple(x for p in parts for x in p[a][1])) for a in ACTIONS}
            self._remember(self._rules_cache, who, rules)
        return rules

    def check(self, who: Principal | str, action: str, name: str) -> Decision:
        """May ``who`` do ``action`` on ``name`` (a service/instance name or a topic)?"""
        if len(name) > MAX_ADDRESS_BYTES:  # no name is that long: decided, never kept
            return self._decide(who, action, name)
        key = (who, action, name)
        decision = self._cache.get(key)
        if decision is None:
            decision = self._decide(who, action, name)
            self._remember(self._cache, key, decision)
        return decision

    def check_register(self, who: Principal | str, name: str) -> Decision:
        """Registering ``org/ns/service[/instance]`` needs ``register`` on the service."""
        try:
            segs = split_name(name, NAME_SEP)
        except Malformed as exc:
            return Decision(False, exc.message, malformed=True)
        if len(segs) not in (3, 4):
            return Decision(False, "register needs org/namespace/service[/instance]",
                            malformed=True)
        return self.check(who, "register", NAME_SEP.join(segs[:3]))

    def check_subscribe_prefix(self, who: Principal | str, prefix: str | bytes) -> Decision:
        """May ``who`` hold a ZeroMQ subscription to this raw prefix? (see module doc)"""
        if isinstance(prefix, (bytes, bytearray, memoryview)):
            try:
                prefix = bytes(prefix).decode("utf-8")
            except UnicodeDecodeError:
                return Decision(False, "prefix is not UTF-8", malformed=True)
        if prefix.endswith(TOPIC_END):
            return self.check(who, "subscribe", prefix[:-1])
        key = (who, _PREFIX_ACTION, prefix)
        decision = self._cache.get(key)
        if decision is None:
            decision = self._decide_prefix(who, prefix)
            self._remember(self._cache, key, decision)
        return decision

    def enforce(self, who: Principal | str, action: str, name: str) -> None:
        """:meth:`check`, raising :class:`Forbidden` (or :class:`Malformed`) on refusal."""
        _raise_unless(self.check(who, action, name))

    def clear_cache(self) -> None:
        self._cache.clear()
        self._rules_cache.clear()

    # ---- internals ----------------------------------------------------------------------

    @staticmethod
    def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
        if len(cache) >= MAX_CACHE:
            cache.clear()  # crude but bounded; a working set that large is an attack
        cache[key] = value

    def _decide(self, who: Principal | str, action: str, name: str) -> Decision:
        if action not in ACTIONS:
            return _UNKNOWN_ACTION
        try:
            segs = split_name(name, TOPIC_SEP if action in TOPIC_ACTIONS else NAME_SEP)
        except Malformed as exc:
            return Decision(False, exc.message, malformed=True)
        allow, deny = self.rules_for(who)[action]
        for role, pat in deny:
            if pat.matches(segs):
                return Decision(False, f"denied by role {role!r} ({pat.text})")
        for role, pat in allow:
            if pat.matches(segs):
                return Decision(True, f"allowed by role {role!r} ({pat.text})")
        return _NO_RULE

    def _decide_prefix(self, who: Principal | str, prefix: str) -> Decision:
        try:
            fixed, partial = split_prefix(prefix)
        except Malformed as exc:
            return Decision(False, exc.message, malformed=True)
        allow, deny = self.rules_for(who)["subscribe"]
        for role, pat in deny:
            if pat.intersects_prefix(fixed, partial):
                return Decision(False, f"prefix reaches topics denied by role {role!r} "
                                       f"({pat.text})")
        for role, pat in allow:
            if pat.covers_prefix(fixed, partial):
                return Decision(True, f"allowed by role {role!r} ({pat.text})")
        return Decision(False, "prefix would also match topics you may not subscribe to")


def _raise_unless(decision: Decision) -> None:
    if not decision.allowed:
        raise (Malformed if decision.malformed else Forbidden)(decision.reason)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ConfigError(f"duplicate member {k!r}")
        out[k] = v
    return out


def load_policy(path: str | Path) -> Policy:
    """Read and compile a policy file; any problem is a :class:`ConfigError`."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read policy {path}: {exc.strerror}") from None
    if len(data) > MAX_POLICY_BYTES:
        raise ConfigError(f"policy {path} is larger than {MAX_POLICY_BYTES} bytes")
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except ConfigError:
        raise
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"policy {path} is not valid JSON: {exc}") from None
    try:
        return Policy(doc)
    except ConfigError as exc:
        raise ConfigError(f"policy {path}: {exc.message}") from None


class PolicyStore:
    """The live policy of a file: :meth:`maybe_reload` swaps it when the file changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._sig = self._signature()
        self.policy = load_policy(self.path)  # at start an invalid file is fatal
        self.last_error: ConfigError | None = None

    def _signature(self) -> tuple[int, int, int] | None:
        return file_signature(self.path)

    def maybe_reload(self) -> bool:
        """Reload if the file changed; True if a new policy is live. An invalid file keeps the
        previous policy (logged, and kept in ``last_error``)."""
        sig = self._signature()
        if sig == self._sig:
            return False
        self._sig = sig
        try:
            policy = load_policy(self.path)
        except ConfigError as exc:
            self.last_error = exc
            log.error("keeping the previous RBAC policy: %s", exc.message)
            return False
        self.policy, self.last_error = policy, None
        log.info("RBAC policy reloaded from %s", self.path)
        return True

    def check(self, who: Principal | str, action: str, name: str) -> Decision:
        return self.policy.check(who, action, name)
