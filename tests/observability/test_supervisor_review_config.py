"""A misspelt table or key in ``mesh.toml`` is refused with its name, before any process
starts: ``[agent.echo]`` for ``[agents.echo]`` used to start a mesh without the agent, and
``replicas = { min = 1, maks = 3 }`` one that never scaled past 1, both with exit code 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agents.supervisor_config import parse_config
from mesh.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_unknown_top_level_tables_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"mesh": {"registry": False},
                      "agent": {"echo": {"namespace": "o/n"}}, "scale": {"interval": 1}})
    assert "unknown table [agent]" in str(err.value)
    assert "unknown table [scale]" in str(err.value)


def test_unknown_keys_in_replicas_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"agents": {"echo": {"namespace": "o/n",
                                          "replicas": {"min": 1, "maks": 3}}}})
    assert "[agents.echo] replicas: unknown key 'maks'" in str(err.value)


def test_agp_up_with_a_misspelt_table_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    config = tmp_path / "mesh.toml"
    config.write_text("""
[mesh]
router = "tcp://127.0.0.1:0"
pub = "tcp://127.0.0.1:0"
control_port = false
registry = false
insecure = true

[agent.echo]
module = "agents.echo"
namespace = "test/sup"
""")
    run_dir = tmp_path / "run"

    def agp(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mesh.cli", *args, "--run-dir",
                               str(run_dir)], capture_output=True, text=True, timeout=60,
                              cwd=ROOT, check=False)

    try:
        out = agp("up", "--config", str(config), "--detach")
        assert out.returncode == 2, out.stderr
        assert "unknown table [agent]" in out.stderr
        assert "Traceback" not in out.stderr
        assert not (run_dir / "supervisor.json").exists()
    finally:
        if (run_dir / "supervisor.json").exists():  # (it started one: stop it)
            agp("down")
