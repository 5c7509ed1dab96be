"""The dashboard in a real headless Chromium: served by a control plane process against a real
secure mesh with a running agent and a workflow run; the page's script renders them; a
screenshot is kept in run/dashboard.png (and run/dashboard-dark.png) to look at."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.procs import ManagedProcess
from tests.helpers import wait_for
from tests.observability.obs_helpers import make_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "run"


@pytest.fixture(scope="module")
def chromium() -> str:
    """Installs Debian's chromium when missing (root + apt); fails clearly otherwise."""
    try:
        return browser.ensure_chromium()
    except browser.BrowserUnavailable as exc:
        pytest.fail(f"the dashboard test needs a browser: {exc}")


@pytest.mark.timeout(900)  # the first run may install Chromium (apt-get) before it starts
def test_dashboard_in_headless_chromium(chromium: str, control_plane: Callable[..., ManagedProcess],
                                        start_echo: Callable[..., ManagedProcess],
                                        tmp_path: Path) -> None:
    start_echo(namespace="acme/dash", instance="alpha", capacity=8)
    start_echo(namespace="acme/dash", instance="beta", capacity=8)
    store = f"sqlite:///{tmp_path}/runs.db"
    run_id = make_run(store, "ml_pipeline")
    url = control_plane(store=store).ready_info["url"] + "/"

    def rendered() -> str | None:
        dom = browser.dump_dom(url)
        # attributes that only the page's script writes: the agents and the run are in the DOM
        wanted = ('data-instance="acme/dash/echo/alpha"', 'data-instance="acme/dash/echo/beta"',
                  f'data-run="{run_id}"', 'class="dot ok"')
        return dom if all(w in dom for w in wanted) else None

    dom = wait_for(rendered, 30, interval=0.2, message="agents and run rendered in Chromium")
    assert "acme/dash/" in dom
    assert ">echo<" in dom
    assert "ml_pipeline" in dom
    assert 'class="step pending"' in dom
    assert "1 service · 2 instances" in dom
    shot = browser.screenshot(url, SHOTS / "dashboard.png")
    dark = browser.screenshot(url, SHOTS / "dashboard-dark.png", dark=True)
    for png in (shot, dark):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", png
        assert len(data) > 20_000, png
    print(f"\nscreenshots: {shot} {dark}")
