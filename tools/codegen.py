"""Generate the Python gRPC stubs from the .proto files into the `pixforge/` package (the only codegen entry).

    python tools/codegen.py            # write pixforge/v1/*_pb2*.py(i) and pixforge/kserve/v2/*_pb2*.py(i)
    python tools/codegen.py --check    # exit 1 if the stubs in the tree are stale or missing

Two proto roots, one per owner, each laid out by import path:
- protos/ holds pixforge's own API: protos/pixforge/v1/ -> pixforge/v1/ (buf lints it).
- third_party/kserve/ holds the KServe v2 / Triton protocol, a foreign contract kept as its
  specification names it: third_party/kserve/pixforge/kserve/v2/ -> pixforge/kserve/v2/.

The stubs are not committed: setup.py calls :func:`generate` whenever the package is built or
installed (`pip install .`, `pip install -e .`, `pip wheel .`), with grpcio-tools from
[build-system] requires, so a checkout never holds stubs older than its protos and generated code
cannot be hand-edited into git. Wheels carry the stubs, so installing a wheel needs no
grpcio-tools. `make protos` regenerates them after a proto edit; tests/shared runs `--check`.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOTS = (ROOT / "protos", ROOT / "third_party" / "kserve")
OUT_ROOT = ROOT  # <root>/pixforge/v1/x.proto -> pixforge/v1/x_pb2.py (directory == package)
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[tuple[Path, Path]]:
    """(proto root, path relative to it) for every .proto, in a stable order."""
    return [(root, p.relative_to(root)) for root in PROTO_ROOTS for p in sorted(root.rglob("*.proto"))]


def stub_paths() -> list[Path]:
    """The generated files, relative to the output root."""
    return [Path(str(rel.with_suffix("")) + suffix) for _, rel in proto_files() for suffix in SUFFIXES]


def generate(out_root: Path) -> list[Path]:
    """Run grpc_tools.protoc on every .proto; return the generated files (relative to out_root)."""
    import grpc_tools
    from grpc_tools import protoc  # build-time dependency only

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    files = proto_files()
    args = [
        "protoc",
        *(f"-I{root}" for root in PROTO_ROOTS),
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(rel) for _, rel in files),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Every directory on the way must be an importable package (the committed __init__.py files
    # carry this docstring; a fresh output directory gets them here).
    for _, rel in files:
        d = out_root / rel.parent
        while d != out_root:
            init = d / "__init__.py"
            if not init.exists():
                init.write_text('"""Generated protobuf/gRPC stubs (tools/codegen.py); do not edit."""\n')
            d = d.parent
    return stub_paths()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail if the tree's stubs differ from fresh ones")
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
