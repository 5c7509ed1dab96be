"""Regenerate proto/agp_pb2.py (and .pyi) from proto/agp.proto with grpcio-tools' protoc.

Run as ``python -m proto.generate [OUTDIR]``; the drift test calls it with a temporary
OUTDIR and compares the result with the committed module.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent


def generate(out_dir: Path) -> list[Path]:
    """Write agp_pb2.py and agp_pb2.pyi into out_dir and return their paths."""
    from grpc_tools import protoc  # dev dependency; only `make proto` needs it

    out_dir.mkdir(parents=True, exist_ok=True)
    rc = protoc.main(
        [
            "protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            str(PROTO_DIR / "agp.proto"),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    return [out_dir / "agp_pb2.py", out_dir / "agp_pb2.pyi"]


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR
    for path in generate(target):
        print(f"wrote {path}")
