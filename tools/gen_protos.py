"""Regenerates the committed Python stubs in protos/python from protos/loyalty.

Run through `make protos`. With --check, regenerates into a temporary folder and
fails if anything differs from what is committed (CI uses this).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_ROOT = ROOT / "protos" / "python"
GENERATED = "loyalty"
# mypy-protobuf installs its protoc plugins next to this interpreter.
BIN = Path(sys.executable).parent


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / GENERATED).rglob("*.proto"))


def generate(out_dir: Path) -> None:
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{wkt}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for folder in [out_dir / GENERATED, *(p for p in (out_dir / GENERATED).rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    (out_dir / GENERATED / "py.typed").touch()


def differences(left: Path, right: Path) -> list[str]:
    cmp = filecmp.dircmp(left, right, ignore=["__pycache__"])
    found = [f"only in {left}: {n}" for n in cmp.left_only] + [f"only in {right}: {n}" for n in cmp.right_only]
    for name in cmp.common_files:
        if (left / name).read_bytes() != (right / name).read_bytes():
            found.append(f"differs: {left / name}")
    for sub in cmp.common_dirs:
        found += differences(left / sub, right / sub)
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        target = PACKAGE_ROOT / GENERATED
        if options.check:
            stale = differences(out / GENERATED, target) if target.exists() else [f"missing {target}"]
            for line in stale:
                print(line, file=sys.stderr)
            if stale:
                print("generated stubs are stale: run `make protos` and commit", file=sys.stderr)
                return 1
            print("generated stubs are up to date")
            return 0
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(out / GENERATED, target)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
