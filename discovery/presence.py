"""An agent process on the LAN: find its router by mDNS, and announce itself there.

:func:`lan_router` is what an agent started with no endpoint (no ``--endpoint``, no
``AGP_ROUTER``) uses: a router announced over mDNS whose key is the router key this agent's
security pins (its AGP_HOME trust store or ``AGP_SERVER_KEY``), never an agent's record and
never a router with another key. An insecure agent has no key to check a claim against, so
it does not browse.

:class:`AgentPresence` announces the running agent as ``_agp._tcp.local.`` (role ``agent``,
its service name, instance id, public key and version in TXT, RFC 6763) so that standard
tools (avahi-browse, dns-sd) and ``discovery.mdns.browse(role="agent")`` see it, and sends
goodbyes when the agent leaves. Announcing probes for about 1.5 s, so it runs on its own
thread after the agent serves; failing to announce (no multicast) never stops the agent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, Final

from discovery.announcer import Announcer
from discovery.browse import find_router
from discovery.mdns_config import mdns_enabled, mesh_name
from mesh.errors import ConfigError

log = logging.getLogger("discovery.presence")

FIND_TIMEOUT: Final = 10.0  # seconds an agent with no endpoint waits for a trusted router
CLOSE_TIMEOUT: Final = 5.0  # seconds close() waits for a probe in progress


def lan_router(security: Any, *, enabled: bool = True, timeout: float = FIND_TIMEOUT,
               env: Mapping[str, str] | None = None) -> str | None:
    """The endpoint of a trusted router announced on the LAN, or None (mDNS off, insecure,
    or none within ``timeout``). ``security`` is a ``mesh.core.Security`` or None."""
    if not enabled or not mdns_enabled(env) or security is None:
        return None
    found = find_router(timeout, pinned_key=security.server_public, mesh=mesh_name(env),
                        env=env)
    if found is None:
        log.warning("no trusted router announced on the LAN within %.0fs", timeout)
        return None
    log.info("found router %s at %s over mDNS", found.name, found.endpoint)
    return found.endpoint


class AgentPresence:
    """An agent's mDNS announcement: :meth:`start` after it serves, :meth:`close` when it
    leaves (goodbyes, so browsers drop it at once)."""

    def __init__(self, *, enabled: bool = True, env: Mapping[str, str] | None = None) -> None:
        self.enabled = enabled and mdns_enabled(env)
        self._env = env
        self._lock = threading.Lock()
        self._announcer: Announcer | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.announced = threading.Event()

    def start(self, *, service: str, instance: str, public_key: str, version: str = "0"
              ) -> bool:
        """Begin announcing on a background thread; False when mDNS is off.

        The SRV port is 0: an agent listens on nothing and is reached through the router
        as ``service/instance``.
        """
        if not self.enabled:
            return False
        try:
            announcer = Announcer(role="agent", name=service, server_key=public_key,
                                  port=0, version=version, mesh=mesh_name(self._env),
                                  instance=f"{service.replace('/', '-')}-{instance}",
                                  instance_id=instance, env=self._env)
        except ConfigError as exc:  # e.g. a version mDNS cannot carry: serve unannounced
            log.warning("not announced on mDNS: %s", exc)
            return False
        with self._lock:
            if self._closed or self._announcer is not None:
                return False
            self._announcer = announcer
            self._thread = threading.Thread(target=self._run, name="agp-mdns-agent",
                                            daemon=True)
            self._thread.start()
        return True

    def _run(self) -> None:
        announcer = self._announcer
        assert announcer is not None
        try:
            announcer.start()
        except Exception as exc:  # no multicast here: the agent serves all the same
            log.warning("mDNS announce failed: %s", exc)
            return
        self.announced.set()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Withdraw the announcement (after a probe in progress ends, bounded)."""
        with self._lock:
            self._closed = True
            thread, announcer = self._thread, self._announcer
        if thread is not None:
            thread.join(timeout)
        if announcer is not None:
            announcer.close()
