"""Announce one mesh process on mDNS/DNS-SD (RFC 6762/6763) as ``_agp._tcp.local.``.

The TXT record (role, name, key, ports, version, mesh; an agent's instance id) is built and
checked by :mod:`discovery.announcement`; this module only drives python-zeroconf: probe,
announce, answer queries, and send goodbyes (TTL 0) on close so browsers drop us at once.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Mapping, Sequence

from zeroconf import ServiceInfo, Zeroconf
from zeroconf.asyncio import AsyncZeroconf

from discovery.announcement import SERVICE_TYPE, announcement_txt, dns_label, host_label
from discovery.mdns_config import (
    Interfaces,
    default_addresses,
    mdns_enabled,
    mdns_interfaces,
    refuse_in_loop,
)
from mesh.errors import Unavailable

log = logging.getLogger("discovery.mdns")


class Announcer:
    """Announces one process on mDNS; ``start()``/``close()`` or the ``async_`` pair.

    ``addresses`` should be where the announced sockets are bound; by default the chosen
    interfaces' addresses (or the host's LAN IPv4 addresses for ``all``). ``port`` is the SRV
    port; a router's also goes in TXT. An agent listens on nothing (it is reached through the
    router by name), so it announces port 0 and its ``instance_id``.
    """

    def __init__(self, *, role: str, name: str, server_key: str, port: int,
                 pub_port: int | None = None, sub_port: int | None = None,
                 version: str = "0", mesh: str = "default", instance: str | None = None,
                 instance_id: str | None = None,
                 addresses: Sequence[str] | None = None, interfaces: Interfaces | None = None,
                 zc: Zeroconf | None = None, env: Mapping[str, str] | None = None) -> None:
        self._txt = announcement_txt(role=role, name=name, server_key=server_key,
                                     version=version, mesh=mesh,
                                     port=None if role == "agent" else port,
                                     pub_port=pub_port, sub_port=sub_port,
                                     instance_id=instance_id)
        self.enabled = mdns_enabled(env)
        self.interfaces = mdns_interfaces(interfaces, env)
        label = dns_label(instance or f"{role}-{socket.gethostname()}-{port}")
        self._addresses = list(addresses) if addresses is not None else None
        self._port = port
        self._server = f"{host_label(label)[:54]}-{secrets.token_hex(4)}.local."
        self._full_name = f"{label}.{SERVICE_TYPE}"
        self._zc = zc
        self._own_zc: Zeroconf | None = None
        self._aiozc: AsyncZeroconf | None = None
        self._info: ServiceInfo | None = None

    @property
    def instance_name(self) -> str:
        """The full DNS-SD instance name (it may gain a ``-2`` suffix on a conflict)."""
        return self._info.name if self._info is not None else self._full_name

    def _make_info(self) -> ServiceInfo:
        addresses = self._addresses or default_addresses(self.interfaces)
        return ServiceInfo(SERVICE_TYPE, self._full_name, port=self._port,
                           properties=self._txt, server=self._server,
                           parsed_addresses=addresses)

    def start(self) -> bool:
        """Probe and announce (about 1.5 s, RFC 6762 s8). False when mDNS is off."""
        refuse_in_loop("Announcer.start")
        if not self.enabled or self._info is not None:
            return self.enabled
        try:
            if self._zc is None:
                self._own_zc = Zeroconf(interfaces=self.interfaces)
            zc = self._zc or self._own_zc
            assert zc is not None
            info = self._make_info()
            zc.register_service(info, allow_name_change=True)
        except OSError as exc:
            self.close()
            raise Unavailable(f"mDNS announce failed: {exc}")
        except BaseException:
            self.close()  # never leave zeroconf's thread and sockets behind
            raise
        self._info = info
        return True

    def close(self) -> None:
        """Send goodbyes (so browsers drop us at once) and release what we opened."""
        zc = self._zc or self._own_zc
        if self._info is not None and zc is not None:
            try:
                zc.unregister_service(self._info)
            except Exception as exc:  # closing must not raise: best effort goodbye
                log.debug("mDNS goodbye failed: %s", exc)
        self._info = None
        if self._own_zc is not None:
            self._own_zc.close()
            self._own_zc = None

    async def async_start(self) -> bool:
        """Probe and announce from a coroutine. False when mDNS is off."""
        if not self.enabled or self._info is not None:
            return self.enabled
        try:
            self._aiozc = AsyncZeroconf(interfaces=self.interfaces, zc=self._zc)
            info = self._make_info()
            done = await self._aiozc.async_register_service(info, allow_name_change=True)
            await done
        except OSError as exc:
            await self.async_close()
            raise Unavailable(f"mDNS announce failed: {exc}")
        except BaseException:
            await self.async_close()
            raise
        self._info = info
        return True

    async def async_close(self) -> None:
        aiozc, self._aiozc = self._aiozc, None
        if aiozc is None:
            return
        if self._info is not None:
            try:
                await (await aiozc.async_unregister_service(self._info))
            except Exception as exc:  # closing must not raise: best effort goodbye
                log.debug("mDNS goodbye failed: %s", exc)
        self._info = None
        if self._zc is None:
            await aiozc.async_close()

    def __enter__(self) -> Announcer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Announcer:
        await self.async_start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.async_close()
