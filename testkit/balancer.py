"""What the throwaway load balancers of the tests share: a free port, a temporary
directory, a checked configuration and a foreground process (testkit/nginx.py,
testkit/haproxy.py)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from testkit.servers import _wait_port, free_port


class BalancerProcess:
    """A balancer on a free loopback port with its files in a new temporary directory."""

    def __init__(self, prefix: str) -> None:
        """Pick the port and make the directory (nothing runs yet)."""
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The agent tunnel endpoint through the balancer."""
        return f"ws://127.0.0.1:{self.port}/api/v1/agent/tunnel"

    @staticmethod
    def _check(command: list[str], what: str) -> None:
        """Run the balancer's own configuration check; raise with its words."""
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{what} failed:\n{result.stdout}{result.stderr}")

    def _launch(self, command: list[str]) -> None:
        """Start ``command`` in the foreground (output in stderr.log); wait until it listens."""
        log = self.root / "stderr.log"
        with log.open("ab") as out:
            self._proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _wait_port(self.port, 15, self._proc, log)

    def stop(self) -> None:
        """SIGTERM (a fast stop for both nginx and HAProxy) and wait."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
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
        shutil.rmtree(self.root, ignore_errors=True)
