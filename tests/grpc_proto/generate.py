"""Generate the Python stubs of ``ptth_echo.proto`` with grpc_tools.protoc into a directory.

Generated code is tied to the installed protobuf runtime, so it is made at test time instead of
being committed: ``python -m tests.grpc_proto.generate OUT_DIR`` or :func:`generate`.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO = PROTO_DIR / "ptth_echo.proto"


def generate(out_dir: Path) -> Path:
    """Write ``ptth_echo_pb2.py`` and ``ptth_echo_pb2_grpc.py`` into ``out_dir``; return it."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(PROTO),
        ]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    return out_dir


if __name__ == "__main__":
    generate(Path(sys.argv[1]))
