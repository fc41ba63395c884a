"""Regenerate repro/proto/caffe_pb2.py from repro/proto/caffe.proto.

Usage (from the repository root): python tools/gen_proto.py
Needs grpcio-tools (it bundles protoc); the generated file is committed so users need only `protobuf`.

protoc's Python output starts with a runtime check that refuses any protobuf runtime older than protoc itself
(grpcio-tools 1.85 -> protobuf >= 7.35). The rest of the file -- a serialized descriptor handed to
protobuf's builder -- works with every runtime since protobuf 4.21, and machines with a preinstalled torch often
carry an older protobuf than we generate with. So we drop that one check (and note it in the file header).
"""
import pathlib
import re
import sys

from grpc_tools import protoc

from repro.cli import tool_main

PROTO_DIR = pathlib.Path(__file__).resolve().parent.parent / "repro" / "proto"
CHECK = re.compile(r"from google\.protobuf import runtime_version as _runtime_version\n|"
                   r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)\n")


def main():
    # -I at the proto folder so the module is named caffe_pb2 (no package prefix in its imports).
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={PROTO_DIR}", str(PROTO_DIR / "caffe.proto")])
    if rc != 0:
        sys.exit(f"protoc failed with exit status {rc}")
    out = PROTO_DIR / "caffe_pb2.py"
    code, n = CHECK.subn("", out.read_text())
    if n != 2:
        sys.exit(f"unexpected protoc output: found {n} of the 2 runtime-check lines to drop; inspect {out}")
    code = code.replace('"""Generated protocol buffer code."""',
                        '"""Generated protocol buffer code (by tools/gen_proto.py: protoc output without its '
                        'runtime version check; needs protobuf >= 4.21)."""', 1)
    out.write_text(code)
    print(f"wrote {out}")


if __name__ == "__main__":
    tool_main("gen_proto", main)
