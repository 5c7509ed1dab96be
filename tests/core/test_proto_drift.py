"""The committed generated module must be what `make proto` would write now."""

from __future__ import annotations

from pathlib import Path

from proto.generate import PROTO_DIR, generate


def test_generated_module_matches_the_proto(tmp_path: Path) -> None:
    for path in generate(tmp_path):
        committed = (PROTO_DIR / path.name).read_text()
        assert path.read_text() == committed, f"{path.name} drifted: run `make proto`"
