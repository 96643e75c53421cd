"""Regenerate the Python modules of the .proto files here: ``python -m kelemetry_py.frontend.proto.generate``.

The OTLP messages are imported from the opentelemetry-proto package, which ships no .proto sources, so their
descriptors are handed to protoc as a descriptor set built from the installed modules.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2, duration_pb2, timestamp_pb2
from google.protobuf.descriptor import FileDescriptor
from grpc_tools import protoc  # type: ignore[import-untyped]
from opentelemetry.proto.trace.v1 import trace_pb2

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
PROTOS = ["trace_storage.proto"]


def _descriptor_set() -> bytes:
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(descriptor: FileDescriptor) -> None:
        if descriptor.name in files:
            return
        for dependency in descriptor.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        descriptor.CopyToProto(proto)
        files[descriptor.name] = proto

    for module in (timestamp_pb2, duration_pb2, trace_pb2):
        add(module.DESCRIPTOR)
    return bytes(descriptor_pb2.FileDescriptorSet(file=list(files.values())).SerializeToString())


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = Path(tmp) / "deps.pb"
        descriptors.write_bytes(_descriptor_set())
        for name in PROTOS:
            relative = (HERE / name).relative_to(ROOT)
            status = protoc.main(
                [
                    "grpc_tools.protoc",
                    f"--descriptor_set_in={descriptors}",
                    f"--proto_path={ROOT}",
                    f"--python_out={ROOT}",
                    f"--pyi_out={ROOT}",
                    f"--grpc_python_out={ROOT}",
                    str(relative),
                ]
            )
            if status != 0:
                print(f"protoc failed on {relative}", file=sys.stderr)
                return int(status)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
