"""Part 1 of `make demo` (every pattern, then the same sealed end to end) as a test, so what
the README promises for `make demo` cannot rot unseen."""

from __future__ import annotations

import os

import pytest

from agents.demo import run_patterns


def test_demo_patterns_run_plain_and_sealed(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    for key in ("AGP_HOME", "AGP_IDENTITY"):  # run_patterns sets them for its own mesh
        monkeypatch.setenv(key, os.environ.get(key, ""))
    run_patterns(tmp_path)
    out = capsys.readouterr().out
    assert "published 1000, received 1000 in order: True, gaps 0" in out
    assert "75%" in out  # weights 3 and 1
    assert "peer to peer over CURVE" in out
    assert "each chunk sealed with AEGIS-256" in out
    assert "pub/sub: 100 published, 100 opened in order True" in out
    assert "refused 0" in out
    assert out.count("exited with 0") == 5  # router, registry, keys, two agents: clean exits
