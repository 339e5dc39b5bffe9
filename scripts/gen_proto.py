"""Generate the Python code for proto/metering/v1 into src/metering/v1.

Run through `make proto`. The output is committed; CI runs this again and
fails if the result differs from what is committed (`make proto-check`).
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "src"
PACKAGE_DIR = OUT_ROOT / "metering" / "v1"


def main() -> int:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "metering" / "v1").glob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    mypy_grpc = shutil.which("protoc-gen-mypy_grpc", path=str(Path(sys.executable).parent))
    if mypy_grpc is None:
        print("protoc-gen-mypy_grpc not found next to the Python interpreter: install mypy-protobuf", file=sys.stderr)
        return 1
    if PACKAGE_DIR.exists():
        shutil.rmtree(PACKAGE_DIR)
    PACKAGE_DIR.mkdir(parents=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={OUT_ROOT}",
        f"--pyi_out={OUT_ROOT}",
        f"--grpc_python_out={OUT_ROOT}",
        f"--plugin=protoc-gen-mypy_grpc={mypy_grpc}",
        f"--mypy_grpc_out={OUT_ROOT}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        return int(code)
    (PACKAGE_DIR / "__init__.py").write_text(
        '"""Generated from proto/metering/v1 by scripts/gen_proto.py; do not edit."""\n'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
