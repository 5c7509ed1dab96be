"""An agent started without keys says what to run in one line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_an_agent_without_keys_says_what_to_run(tmp_path: Path) -> None:
    env = {**os.environ, "AGP_HOME": str(tmp_path / "empty-home"), "AGP_MDNS": "0"}
    env.pop("AGP_IDENTITY", None)
    out = subprocess.run([sys.executable, "-m", "mesh.cli", "agent", "echo", "--namespace",
                          "acme/ml", "--endpoint", "tcp://127.0.0.1:1"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT, env=env, check=False)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "run `agp keys new echo`" in out.stderr


def test_bad_numbers_are_usage_errors_not_tracebacks(tmp_path: Path) -> None:
    """From flags and from AGP_* alike: named, exit 2, nothing started."""
    base = [sys.executable, "-m", "agents.echo", "--insecure", "--endpoint",
            "tcp://127.0.0.1:1", "--no-mdns"]
    cases = [(["--capacity", "-1"], {}, "--capacity"), (["--weight", "0"], {}, "--weight"),
             (["--drain-timeout", "nan"], {}, "--drain-timeout"),
             (["--metrics-port", "70000"], {}, "--metrics-port"),
             ([], {"AGP_CAPACITY": "abc"}, "--capacity")]
    for flags, extra, named in cases:
        env = {**os.environ, "AGP_MDNS": "0", **extra}
        out = subprocess.run(base + flags, capture_output=True, text=True, timeout=60,
                             cwd=ROOT, env=env, check=False)
        assert out.returncode == 2, (flags, extra, out.stderr)
        assert "Traceback" not in out.stderr, out.stderr
        assert f"argument {named}" in out.stderr, out.stderr


def test_a_token_lifetime_out_of_range_is_a_usage_error_of_the_router() -> None:
    for ttl in ("0", "86401", "soon"):
        out = subprocess.run([sys.executable, "-m", "router", "--token-ttl", ttl],
                             capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
        assert out.returncode == 2, (ttl, out.stderr)
        assert "Traceback" not in out.stderr, out.stderr
        assert "argument --token-ttl" in out.stderr, out.stderr
