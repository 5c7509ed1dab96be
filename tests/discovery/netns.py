"""Network namespaces as separate hosts on one LAN, for the across-hosts discovery tests.

:class:`NetLab` makes one namespace per host, named ``agpt-<pid>-<host>`` so parallel runs
never collide. The first host holds a bridge ``br0`` (it is the "switch" and has the first
address); every other host joins it by a veth pair whose switch-side end is a bridge port
named ``v<host>`` and whose host-side end is ``eth0``. Every interface is up with multicast
on and a 224.0.0.0/4 route, so mDNS crosses the bridge. :meth:`NetLab.link` sets a host's
switch port down or up: a cable pulled and plugged back, with no FIN or RST on any socket.

:class:`NsProcess` is an :class:`~agents.procs.ManagedProcess` that runs ``python ARGS``
inside a namespace (``ip netns exec`` execs, so the pid we hold is the Python process) and
speaks a line protocol on its stdin (see ``netns_probe``). :meth:`NetLab.close` kills every
process it started (by pid) and deletes every namespace, whatever happened before; a run
that was itself killed -9 leaves namespaces that the next lab deletes (only
``agpt-<pid>-*`` whose pid is gone).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

from agents.procs import ManagedProcess

ROOT: Final = Path(__file__).resolve().parents[2]
SUBNET: Final = "10.77.0"
IP_TIMEOUT: Final = 10.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT,
                          check=check)


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"agpt-{os.getpid()}-probe"
    try:
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` is not permitted here: {made.stderr.strip()[:200]}"
        link = _ip("-n", probe, "link", "add", "x0", "type", "veth", "peer", "name", "x1",
                   check=False)
        if link.returncode != 0:
            return f"veth links cannot be made here: {link.stderr.strip()[:200]}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns` failed: {exc}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


class NsProcess(ManagedProcess):
    """A Python process inside a namespace that also answers a line protocol on stdin."""

    def __init__(self, ns: str, name: str, args: list[str], env: dict[str, str | None],
                 log_dir: Path) -> None:
        super().__init__(name, args, log_dir=log_dir, env=env,
                         launcher=["ip", "netns", "exec", ns], stdin=True, cwd=ROOT)
        self.ns = ns
        self._ids = itertools.count(1)
        self.start(ready_timeout=None)

    def call(self, op: str, timeout: float = 10.0, **args: Any) -> Any:
        """Ask a probe process to do ``op``; its value, or AssertionError with its error."""
        ident = next(self._ids)
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": ident, "op": op, **args}).encode() + b"\n")
        self.proc.stdin.flush()
        reply = self.wait_event("reply", timeout, id=ident)
        if not reply["ok"]:
            raise AssertionError(f"{self.name} {op}: {reply['error']}")
        return reply["value"]


class NetLab:
    """Hosts (namespaces) on one bridged LAN; a context manager that always cleans up."""

    def __init__(self, hosts: tuple[str, ...], log_dir: Path) -> None:
        assert 2 <= len(hosts) <= 3
        self.hosts = hosts
        self.log_dir = log_dir
        self.ns = {h: f"agpt-{os.getpid()}-{h}" for h in hosts}
        self.addr = {h: f"{SUBNET}.{i + 1}" for i, h in enumerate(hosts)}
        self.procs: list[NsProcess] = []
        self._made: list[str] = []

    def __enter__(self) -> NetLab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _sweep_stale() -> None:
        """Delete namespaces a killed earlier run left (``agpt-<pid>-*`` whose pid is gone)."""
        listed = _ip("netns", "list", check=False).stdout.split("\n")
        for line in listed[:256]:
            m = re.match(r"agpt-(\d+)-[a-z]+", line)
            if m is None or int(m.group(1)) == os.getpid():
                continue
            try:
                os.kill(int(m.group(1)), 0)
            except ProcessLookupError:
                _ip("netns", "del", m.group(0), check=False)
            except PermissionError:
                pass  # alive, someone else's

    def _build(self) -> None:
        self._sweep_stale()
        switch = self.hosts[0]
        for h in self.hosts:
            _ip("netns", "add", self.ns[h])
            self._made.append(self.ns[h])
            _ip("-n", self.ns[h], "link", "set", "lo", "up")
        sw = self.ns[switch]
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        self._iface(switch, "br0")
        for h in self.hosts[1:]:
            _ip("-n", sw, "link", "add", f"v{h}", "type", "veth", "peer", "name", "eth0",
                "netns", self.ns[h])
            _ip("-n", sw, "link", "set", f"v{h}", "master", "br0")
            _ip("-n", sw, "link", "set", f"v{h}", "up")
            self._iface(h, "eth0")

    def _iface(self, host: str, dev: str) -> None:
        ns = self.ns[host]
        _ip("-n", ns, "addr", "add", f"{self.addr[host]}/24", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up", "multicast", "on")
        _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)

    def link(self, host: str, up: bool) -> None:
        """Unplug (or plug back) ``host``'s cable: its port on the switch goes down (up)."""
        _ip("-n", self.ns[self.hosts[0]], "link", "set", f"v{host}", "up" if up else "down")

    def spawn(self, host: str, name: str, args: list[str], env: dict[str, str | None]
              ) -> NsProcess:
        proc = NsProcess(self.ns[host], name, args, env, self.log_dir)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """Kill every process we started (by pid), then delete every namespace we made."""
        for proc in reversed(self.procs):
            proc.stop()
        for ns in reversed(self._made):
            _ip("netns", "del", ns, check=False)
        self._made.clear()
        leaked = [p.name for p in self.procs if p.alive()]
        assert not leaked, f"processes still alive: {leaked}"
