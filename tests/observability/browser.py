"""Headless Chromium for the dashboard test: find it (installing Debian's package when it is
missing and we may), dump a page's DOM after its scripts ran, take a screenshot.

    python tests/observability/browser.py install      # make target: apt-get install chromium
    python tests/observability/browser.py check        # exit 0 when a browser is usable
    python tests/observability/browser.py shot URL OUT.png

Why the command line and not a driver: ``--dump-dom`` and ``--screenshot`` need nothing but
the browser. A budget of virtual time lets a page's timers and fetches settle first; the
dashboard needs none (it renders its inlined snapshot synchronously, and an open
EventSource would keep virtual time from ever running out), so the default is 0: dump at load.
The flags keep Chromium off the network it has no access to here (no background fetches,
no component updates) and out of the sandbox it cannot build as root in a container.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")


class BrowserUnavailable(RuntimeError):
    """No Chromium, and it could not be installed: the message says what to run."""


def find_chromium() -> str | None:
    env = os.environ.get("AGP_CHROMIUM")
    if env and Path(env).exists():
        return env
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium(install: bool = True, timeout: float = 900.0) -> str:
    """The browser's path; installs Debian's ``chromium`` when missing (as root, with apt)."""
    path = find_chromium()
    if path or not install:
        if path:
            return path
        raise BrowserUnavailable("no Chromium found; install it with "
                                 "`apt-get install -y chromium` or set AGP_CHROMIUM")
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise BrowserUnavailable(
            "Chromium is missing and cannot be installed here (needs root and apt-get): "
            "run `sudo apt-get install -y chromium`, or set AGP_CHROMIUM to a browser")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [["apt-get", "update", "-qq"],
             ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium",
              "fonts-liberation"]]
    for cmd in steps:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if done.returncode != 0:
            raise BrowserUnavailable(f"`{' '.join(cmd)}` failed ({done.returncode}): "
                                     f"{done.stderr.strip()[-800:]}")
    path = find_chromium()
    if path is None:
        raise BrowserUnavailable("apt-get installed chromium but no browser is on PATH")
    return path


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the browser in its own process group, so a timeout ends its helpers too."""
    browser = ensure_chromium()
    with tempfile.TemporaryDirectory(prefix="agp-chromium-") as profile:
        proc = subprocess.Popen([browser, *FLAGS, f"--user-data-dir={profile}", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def dump_dom(url: str, *, budget_ms: int = 0, timeout: float = 60.0) -> str:
    """The page's DOM once its scripts ran for ``budget_ms`` of virtual time."""
    budget = [f"--virtual-time-budget={budget_ms}"] if budget_ms else []
    done = _run([*budget, "--dump-dom", url], timeout)
    if done.returncode != 0:
        raise RuntimeError(f"chromium --dump-dom exited {done.returncode}: {done.stderr[-800:]}")
    return done.stdout


def screenshot(url: str, out: str | Path, *, size: tuple[int, int] = (1280, 900),
               budget_ms: int = 0, timeout: float = 60.0, dark: bool = False) -> Path:
    """A PNG of the page at ``size``; ``dark`` asks for the dark colour scheme."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()
    extra = ["--force-dark-mode", "--blink-settings=preferredColorScheme=0"] if dark else []
    budget = [f"--virtual-time-budget={budget_ms}"] if budget_ms else []
    done = _run([*extra, *budget, f"--screenshot={out}",
                 f"--window-size={size[0]},{size[1]}", url], timeout)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"chromium --screenshot exited {done.returncode}: {done.stderr[-800:]}")
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["install"]:
        print(ensure_chromium())
        return 0
    if argv[:1] == ["check"]:
        path = find_chromium()
        print(path or "no chromium")
        return 0 if path else 1
    if argv[:1] == ["shot"] and len(argv) == 3:
        print(screenshot(argv[1], argv[2]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BrowserUnavailable as exc:
        print(f"browser: {exc}", file=sys.stderr)
        sys.exit(1)
