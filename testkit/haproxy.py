"""A throwaway HAProxy in front of visionA nodes, configured with docs/haproxy.cfg itself.

As for nginx (testkit/nginx.py): the file docs/operations.md shows verbatim is read
and only the frontend's ``bind`` line and the backend's ``server`` lines change; the
``global`` and ``defaults`` sections (pid file, foreground) are the test's own, in a
temporary directory. The binary is Debian's (``scripts/system-deps.sh`` installs it).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from testkit.balancer import BalancerProcess

DOC_CFG = Path(__file__).resolve().parent.parent / "docs" / "haproxy.cfg"
_BIND = re.compile(r"^(\s*)bind :80$", re.MULTILINE)
_SERVER = re.compile(r"^(\s*)server (\w+) 10\.0\.0\.\d+:8080 (.*)$", re.MULTILINE)
_HEAD = """\
global
    pidfile {root}/haproxy.pid

defaults
    log global

"""


def haproxy_binary() -> str:
    """Debian's haproxy (``/usr/sbin`` may be missing from a user's PATH)."""
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else ""
    )
    if not found:
        raise RuntimeError("haproxy not found; run `make test` (scripts/system-deps.sh)")
    return found


def balancer_cfg(upstreams: Sequence[str], port: int, text: str | None = None) -> str:
    """docs/haproxy.cfg with ``bind 127.0.0.1:port`` and one ``server`` line per upstream."""
    text = DOC_CFG.read_text() if text is None else text
    documented = list(_SERVER.finditer(text))
    if not documented or not _BIND.search(text):
        raise ValueError("docs/haproxy.cfg lost its `bind :80` or backend `server` lines")
    indent, options = documented[0].group(1), documented[0].group(3)
    servers = "\n".join(f"{indent}server n{i} {u} {options}" for i, u in enumerate(upstreams))
    text = text[: documented[0].start()] + servers + text[documented[-1].end() :]
    return _BIND.sub(lambda m: f"{m.group(1)}bind 127.0.0.1:{port}", text, count=1)


class HaproxyServer(BalancerProcess):
    """HAProxy balancing over ``upstreams`` on a free loopback port, until :meth:`stop`."""

    def __init__(self, upstreams: Sequence[str]) -> None:
        """Write the configuration into a new temporary directory (not started yet)."""
        super().__init__("visiona-haproxy-")
        self._cfg = self.root / "haproxy.cfg"
        self._cfg.write_text(_HEAD.format(root=self.root) + balancer_cfg(upstreams, self.port))

    def start(self) -> None:
        """Check the file (``haproxy -c``), start in the foreground (``-db``), wait for it."""
        self._check([haproxy_binary(), "-c", "-q", "-f", str(self._cfg)], "haproxy -c")
        self._launch([haproxy_binary(), "-db", "-f", str(self._cfg)])
