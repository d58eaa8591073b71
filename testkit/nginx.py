"""A throwaway nginx in front of visionA nodes, configured with docs/nginx.conf itself.

The http-context file users are told to install (docs/nginx.conf, shown verbatim in
docs/operations.md) is read and only two things change: the ``listen`` line (a free
loopback port) and the upstream's ``server`` lines (the nodes). Everything nginx
writes (pid, error log, temporary files) goes to a temporary directory; the binary
is Debian's (``scripts/system-deps.sh`` installs it).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from testkit.balancer import BalancerProcess

DOC_CONF = Path(__file__).resolve().parent.parent / "docs" / "nginx.conf"
_LISTEN = re.compile(r"^(\s*)listen 80;$", re.MULTILINE)
_UPSTREAM_SERVER = re.compile(r"^(\s*)server 10\.0\.0\.\d+:8080 (.*);$", re.MULTILINE)

# The main context around the users' file: only paths and process settings.
_MAIN = """\
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {root}/nginx.pid;
error_log {root}/error.log {level};
lock_file {root}/nginx.lock;

events {{
    worker_connections {connections};
}}

http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;

    include {root}/visiona.conf;
}}
"""


def nginx_binary() -> str:
    """Debian's nginx (``/usr/sbin`` may be missing from a user's PATH)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        raise RuntimeError(
            "nginx not found; run `make test` (scripts/system-deps.sh) to install it"
        )
    return found


def balancer_conf(
    upstreams: Sequence[str], port: int, text: str | None = None, *, reuseport: bool = False
) -> str:
    """docs/nginx.conf with ``listen 127.0.0.1:port`` and one ``server`` line per upstream.

    ``upstreams`` are ``host:port``; the options of the documented ``server`` lines
    (``max_fails``, ``fail_timeout``) are kept.
    """
    text = DOC_CONF.read_text() if text is None else text
    documented = list(_UPSTREAM_SERVER.finditer(text))
    if not documented or not _LISTEN.search(text):
        raise ValueError("docs/nginx.conf lost its `listen 80;` or upstream `server` lines")
    indent, options = documented[0].group(1), documented[0].group(2)
    servers = "\n".join(f"{indent}server {u} {options};" for u in upstreams)
    start, end = documented[0].start(), documented[-1].end()
    text = text[:start] + servers + text[end:]
    spread = " reuseport" if reuseport else ""
    return _LISTEN.sub(lambda m: f"{m.group(1)}listen 127.0.0.1:{port}{spread};", text, count=1)


class NginxServer(BalancerProcess):
    """nginx balancing over ``upstreams`` on a free loopback port, until :meth:`stop`."""

    def __init__(
        self, upstreams: Sequence[str], *, workers: int = 1, connections: int = 4096
    ) -> None:
        """Write the configuration into a new temporary directory (not started yet).

        ``connections``: each worker's ``worker_connections`` (a tunnel through nginx
        takes two: the agent's and the upstream one); ``worker_rlimit_nofile`` is set
        above it. With several ``workers`` the listener is ``reuseport``: the kernel
        spreads new connections evenly over them (each worker's open files are bounded
        by the process limit)."""
        super().__init__("visiona-nginx-")
        # Workers run as nginx's default user when the master is root: let them in.
        self.root.chmod(0o755)
        self._log = self.root / "error.log"
        (self.root / "visiona.conf").write_text(
            balancer_conf(upstreams, self.port, reuseport=workers > 1)
        )
        (self.root / "nginx.conf").write_text(
            _MAIN.format(
                root=self.root,
                workers=workers,
                level="warn",
                connections=connections,
                nofile=connections + 1024,
            )
        )

    def _command(self, *extra: str) -> list[str]:
        return [nginx_binary(), *extra, "-p", str(self.root), "-c", str(self.root / "nginx.conf")]

    def check(self) -> None:
        """``nginx -t`` on the configuration (raises with nginx's own words)."""
        self._check(self._command("-t"), "nginx -t")

    def start(self) -> None:
        """Start nginx in the foreground (``daemon off``) and wait until it listens."""
        self.check()
        self._launch(self._command())

    def error_log(self) -> str:
        """What nginx logged (warnings and errors)."""
        return self._log.read_text(errors="replace") if self._log.exists() else ""
