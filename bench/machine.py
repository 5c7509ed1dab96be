"""The machine a benchmark ran on, for ``latest.json``: CPU, cores, memory, OS, Python,
pyzmq and libzmq, CURVE, and the git commit measured (figures mean little without them)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

_REPO: Final = Path(__file__).resolve().parent.parent

_MACHINE: dict[str, Any] = {}


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, OS, Python, pyzmq/libzmq versions, git commit (cached)."""
    if _MACHINE:
        return dict(_MACHINE)
    import zmq

    cpu = platform.processor() or "unknown cpu"
    mem_kib = 0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    _MACHINE.update(
        cpu_model=cpu,
        cpus=os.cpu_count() or 0,
        cpus_usable=usable,
        memory_gib=round(mem_kib / 1024 / 1024, 1),
        os=platform.platform(),
        python=platform.python_version(),
        python_impl=platform.python_implementation(),
        pyzmq=zmq.pyzmq_version(),
        libzmq=zmq.zmq_version(),
        curve=bool(zmq.has("curve")),
        git_commit=_git_commit(),
    )
    return dict(_MACHINE)


def _git_commit() -> str:
    """HEAD's hash (read-only git), or 'unknown' outside a repo or before the first commit."""
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        out = subprocess.run(
            [git, "rev-parse", "HEAD"], cwd=_REPO, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"
