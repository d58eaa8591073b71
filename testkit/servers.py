"""Throwaway PostgreSQL and Redis servers for tests and benchmarks.

Each server runs from Debian's binaries in a fresh temporary directory on a free
loopback port, and can be stopped and started again on the same port (to test
recovery). PostgreSQL refuses to run as root, so when the tests run as root the
server runs as the ``postgres`` system user that Debian's package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def free_port() -> int:
    """A currently free loopback TCP port (for servers that cannot take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout}s")


def postgres_bindir() -> Path:
    """The newest Debian PostgreSQL bin directory."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if not found:
        raise RuntimeError("PostgreSQL binaries not found; run `make test` to install them")
    return Path(found[-1])


class PostgresServer:
    """A private PostgreSQL cluster (trust auth, loopback only, no fsync)."""

    def __init__(self) -> None:
        """Prepare (but do not start) a cluster in a new temporary directory."""
        self.port = free_port()
        self._bindir = postgres_bindir()
        self._root = Path(tempfile.mkdtemp(prefix="visiona-pg-"))
        self._data = self._root / "data"
        self._log = self._root / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_user: str | None = None
        if os.geteuid() == 0:
            self._as_user = "postgres"
            pw = pwd.getpwnam("postgres")
            os.chown(self._root, pw.pw_uid, pw.pw_gid)
        self._root.chmod(0o755)

    def _cmd(self, *args: str) -> list[str]:
        if self._as_user:
            return ["runuser", "-u", self._as_user, "--", *args]
        return list(args)

    def init(self) -> None:
        """Run initdb (once)."""
        subprocess.run(
            self._cmd(
                str(self._bindir / "initdb"),
                "-D",
                str(self._data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        """Start the server on :attr:`port` and wait until it accepts connections."""
        if not self._data.exists():
            self.init()
        # The child keeps its own descriptor of the log: ours is closed once it started.
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                self._cmd(
                    str(self._bindir / "postgres"),
                    "-D",
                    str(self._data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self._root),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait_port(self.port, 30, self._proc, self._log)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            result = subprocess.run(
                [str(self._bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if result.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not become ready")

    def stop(self) -> None:
        """Fast shutdown (disconnects every client); the data stays for a restart."""
        if self._proc is None:
            return
        if self._as_user:
            # The postgres process is a child of runuser; signal the whole group of it.
            subprocess.run(
                self._cmd(
                    str(self._bindir / "pg_ctl"), "-D", str(self._data), "-m", "fast", "stop"
                ),
                capture_output=True,
                check=False,
            )
        else:
            self._proc.terminate()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL with psql and return its output."""
        result = subprocess.run(
            [
                str(self._bindir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                dbname,
                "-v",
                "ON_ERROR_STOP=1",
                "-Atqc",
                sql,
            ],
            capture_output=True,
            check=True,
            text=True,
        )
        return result.stdout

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its SQLAlchemy URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def clone_database(self, template: str) -> str:
        """A new database copied from ``template`` (``CREATE DATABASE … TEMPLATE``); its URL.

        The template must have no open session (PostgreSQL refuses to copy it then).
        """
        name = f"visiona_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def url(self, dbname: str) -> str:
        """The asyncpg URL of ``dbname``."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{dbname}"

    def cleanup(self) -> None:
        """Stop the server and delete its files."""
        self.stop()
        shutil.rmtree(self._root, ignore_errors=True)


class RedisServer:
    """A private Redis server (no persistence, loopback only)."""

    def __init__(self) -> None:
        """Prepare a server on a free port."""
        self.port = free_port()
        self._root = Path(tempfile.mkdtemp(prefix="visiona-redis-"))
        self._log = self._root / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start and wait until it listens."""
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        # The child keeps its own descriptor of the log: ours is closed once it started.
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self._root),
                    "--daemonize",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait_port(self.port, 15, self._proc, self._log)

    def stop(self) -> None:
        """Stop the server (its data is gone: nothing is persisted)."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def cleanup(self) -> None:
        """Stop and delete its files."""
        self.stop()
        shutil.rmtree(self._root, ignore_errors=True)
