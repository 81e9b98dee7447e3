"""Regenerate the committed gRPC stubs from `api.proto` (a developer tool, not used at run time).

Run from the repository root: `python -m exporter.context.podresources.regenerate`. It needs
grpcio-tools, a development dependency. The proto is compiled with the repository root as the
include path, so the generated `api_pb2_grpc.py` imports `api_pb2` by its full package name.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO = "exporter/context/podresources/api.proto"


def main() -> int:
    """Compile api.proto into api_pb2.py, api_pb2.pyi and api_pb2_grpc.py; return protoc's status."""
    from grpc_tools import protoc  # type: ignore[import-untyped]  # no type stubs; dev-only tool

    root = Path(__file__).resolve().parents[3]
    args = ["protoc", f"-I{root}", f"--python_out={root}", f"--pyi_out={root}", f"--grpc_python_out={root}", PROTO]
    status: int = protoc.main(args)
    if status != 0:
        print(f"protoc failed with status {status} on {PROTO}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
