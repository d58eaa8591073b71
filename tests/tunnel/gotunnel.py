"""Build the Go tunnel peer (``tests/interop/go/src/tunnelpeer``) like the yamux peer.

GOPATH mode against Debian's hashicorp/yamux and gorilla/websocket; the binary goes
to ``tests/interop/bin/tunnelpeer`` (gitignored with the rest of that directory).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.interop.gopeer import BIN_DIR, SYSTEM_GOPATH, GoPeerError

GO_SOURCE = Path(__file__).resolve().parents[1] / "interop" / "go" / "src" / "tunnelpeer"
BINARY = BIN_DIR / "tunnelpeer"


def build_tunnel_peer() -> Path:
    """Build (incrementally: a shared GOCACHE) and return the Go tunnel peer."""
    go = shutil.which("go")
    if go is None:
        raise GoPeerError("go is not installed: run `make system-deps` (scripts/system-deps.sh)")
    BIN_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tunnelpeer-gopath-") as gopath:
        src = Path(gopath) / "src"
        src.mkdir()
        (src / "tunnelpeer").symlink_to(GO_SOURCE, target_is_directory=True)
        env = {
            **os.environ,
            "GOPATH": f"{gopath}:{SYSTEM_GOPATH}",
            "GO111MODULE": "off",
            "GOFLAGS": "",
            "GOCACHE": str(BIN_DIR / "gocache"),
            "CGO_ENABLED": "0",
        }
        proc = subprocess.run(
            [go, "build", "-o", str(BINARY), "tunnelpeer"],
            cwd=gopath,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        raise GoPeerError(f"go build failed:\n{proc.stdout}{proc.stderr}")
    return BINARY
