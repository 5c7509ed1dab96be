"""mDNS/DNS-SD (RFC 6762/6763) announce and browse of mesh processes, over python-zeroconf.

A router announces ``_agp._tcp.local.`` with its ports and CURVE server key in TXT; agents
announce themselves too (role ``agent``, name, instance id, key); a client on the LAN browses
to find a router without configuration, and trusts only one whose key it pinned. Without
mDNS (``AGP_MDNS=0``, or no multicast on the network), a client uses an explicit endpoint or
``AGP_ROUTER`` (see :func:`router_endpoint`).

This module is the stable import point; the work is split by job:

- :mod:`discovery.announcement`: the TXT codec and every check on what is received (sans-IO);
- :mod:`discovery.mdns_config`: switches (``AGP_MDNS``, ``AGP_MDNS_INTERFACES``), counters;
- :mod:`discovery.announcer`: :class:`Announcer`, announcing one process;
- :mod:`discovery.browse`: browsing, and finding a trusted router;
- :mod:`discovery.presence`: an agent process's side (find its router, announce itself).
"""

from __future__ import annotations

from discovery.announcement import SERVICE_TYPE, Announcement, RouterInfo
from discovery.announcer import Announcer
from discovery.browse import (
    MAX_CANDIDATES,
    RESOLVE_TIMEOUT,
    async_browse_routers,
    async_find_router,
    browse,
    browse_routers,
    find_router,
    router_endpoint,
)
from discovery.mdns_config import (
    ENV_INTERFACES,
    ENV_MDNS,
    ENV_MESH,
    ENV_ROUTER,
    STATS,
    Interfaces,
    MdnsStats,
    TrustCheck,
    mdns_enabled,
    mdns_interfaces,
)

__all__ = [
    # announcing
    "Announcer", "SERVICE_TYPE",
    # browsing and finding
    "Announcement", "RouterInfo", "browse", "browse_routers", "async_browse_routers",
    "find_router", "async_find_router", "router_endpoint", "MAX_CANDIDATES",
    "RESOLVE_TIMEOUT",
    # switches and counters
    "mdns_enabled", "mdns_interfaces", "Interfaces", "TrustCheck", "MdnsStats", "STATS",
    "ENV_MDNS", "ENV_INTERFACES", "ENV_ROUTER", "ENV_MESH",
]
