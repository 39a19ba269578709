"""Generate the Python gRPC stubs from protos/ into the `pixforge/` package (the only codegen entry).

    python tools/codegen.py            # write pixforge/v1/*_pb2*.py(i) and pixforge/kserve/v2/*_pb2*.py(i)
    python tools/codegen.py --check    # exit 1 if the committed stubs are stale

Each proto lands in the package its path names: protos/pixforge/v1/ (pixforge's own API) ->
pixforge/v1/, protos/pixforge/kserve/v2/ (the KServe v2 / Triton protocol) -> pixforge/kserve/v2/.
The stubs are committed (so a plain `pip install` needs no grpcio-tools) and never hand-edited;
tests/shared/test_shared_layout.py runs `--check`, which regenerates them into a temp dir and
fails on any difference.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT  # protos/pixforge/v1/x.proto -> pixforge/v1/x_pb2.py (directory == package)


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Run grpc_tools.protoc on every .proto; return the generated files (relative to out_root)."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency only

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = []
    for rel in files:
        stem = Path(rel).with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            generated.append(Path(str(stem) + suffix))
    # Every directory on the way must be an importable package.
    for rel in files:
        d = out_root / Path(rel).parent
        while d != out_root:
            init = d / "__init__.py"
            if not init.exists():
                init.write_text('"""Generated protobuf/gRPC stubs (tools/codegen.py); do not edit."""\n')
            d = d.parent
    return generated


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail if committed stubs differ from fresh ones")
    args = ap.parse_args()
    if not args.check:
        for rel in generate(OUT_ROOT):
            print(f"wrote {rel}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = [
            rel
            for rel in generate(Path(tmp))
            if not (OUT_ROOT / rel).exists()
            or not filecmp.cmp(Path(tmp) / rel, OUT_ROOT / rel, shallow=False)
        ]
    if stale:
        print("stale generated stubs (run `make protos`): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    print("generated stubs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
