"""A throwaway OpenSSH server on a loopback port, and the ``ssh``/``scp`` command lines
that reach it as the current user.

The server is Debian's ``openssh-server`` (``scripts/system-deps.sh`` installs it),
started in the foreground (``-D -e``) with a minimal config in a temporary directory:
a generated host key, a throwaway user key in its own ``authorized_keys``, ``UsePAM
no`` and ``StrictModes no`` (the temporary directory's modes are not sshd's concern),
a pid file beside them. The port is a free one picked by binding port 0 (retried if
another process takes it first). Every line sshd logs (``LogLevel VERBOSE``: one
``Connection from …`` per accepted connection) is kept in :attr:`SshServer.log`.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import re
import shutil
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_LISTENING = re.compile(r"Server listening on 127\.0\.0\.1 port (\d+)")
_CONFIG = """\
ListenAddress 127.0.0.1:{port}
HostKey {root}/host_key
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
LogLevel VERBOSE
Subsystem sftp internal-sftp
"""


def _binary(name: str, sbin: bool = False) -> str:
    found = shutil.which(name) or (f"/usr/sbin/{name}" if sbin else "")
    if not found or not Path(found).exists():
        raise RuntimeError(f"{name} not found; run `make system-deps` (openssh) to install it")
    return found


@dataclass
class SshServer:
    """A running sshd: its port, its host key line, the user key and what it logged."""

    root: Path
    port: int
    host_public_key: str
    user_key: Path
    user: str = field(default_factory=getpass.getuser)
    log: list[str] = field(default_factory=list)

    def connections(self) -> int:
        """Connections sshd accepted so far."""
        return sum(1 for line in self.log if "Connection from" in line)

    def client_options(self, host_alias: str, proxy_command: str) -> list[str]:
        """``ssh``/``scp`` options reaching this server as ``host_alias`` through
        ``proxy_command``: the host key pinned (strict checking), the user key only,
        never a prompt, no user config."""
        known = self.root / "known_hosts"
        known.write_text(f"{host_alias} {self.host_public_key}\n", encoding="utf-8")
        return [
            "-F", "/dev/null",
            "-i", str(self.user_key),
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known}",
            "-o", "LogLevel=ERROR",
            "-o", f"ProxyCommand={proxy_command}",
        ]  # fmt: skip

    def ssh(self, host_alias: str, proxy_command: str, *command: str) -> list[str]:
        """The ``ssh`` command line running ``command`` on this server."""
        options = self.client_options(host_alias, proxy_command)
        return [_binary("ssh"), *options, "-l", self.user, host_alias, *command]

    def scp(self, host_alias: str, proxy_command: str, source: Path, target: Path) -> list[str]:
        """The ``scp`` command line copying local ``source`` to ``target`` on this server."""
        options = self.client_options(host_alias, proxy_command)
        return [_binary("scp"), "-q", *options, str(source), f"{self.user}@{host_alias}:{target}"]


async def _keygen(path: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        _binary("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "visiona-test",
        "-f", str(path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"ssh-keygen failed: {err.decode(errors='replace')}")
    return path.with_suffix(".pub").read_text(encoding="utf-8").strip()


def _make_dirs(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:  # root's sshd wants its privilege separation directory
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _read_log(stream: asyncio.StreamReader, log: list[str]) -> None:
    while line := await stream.readline():
        log.append(line.decode(errors="replace").rstrip())


@contextlib.asynccontextmanager
async def run_sshd(root: Path, *, attempts: int = 5) -> AsyncIterator[SshServer]:
    """Start sshd under ``root`` (created) and stop it on exit."""
    await asyncio.to_thread(_make_dirs, root)
    host_public = await _keygen(root / "host_key")
    user_public = await _keygen(root / "user_key")
    await asyncio.to_thread(_write, root / "authorized_keys", user_public + "\n")
    sshd = _binary("sshd", sbin=True)
    for _ in range(attempts):
        port = _free_port()
        await asyncio.to_thread(_write, root / "sshd_config", _CONFIG.format(port=port, root=root))
        proc = await asyncio.create_subprocess_exec(
            sshd, "-D", "-e", "-f", str(root / "sshd_config"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        log: list[str] = []
        started = await _started(proc.stderr, log)
        if started is None:
            await proc.wait()
            if any("Address already in use" in line for line in log):
                continue
            raise RuntimeError("sshd did not start: " + " | ".join(log[-5:]))
        reader = asyncio.get_running_loop().create_task(_read_log(proc.stderr, log))
        server = SshServer(root, started, host_public, root / "user_key", log=log)
        try:
            yield server
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            await proc.wait()
            await reader
        return
    raise RuntimeError(f"sshd found no free port in {attempts} attempts")


async def _started(stream: asyncio.StreamReader, log: list[str]) -> int | None:
    """The port once sshd says it listens; None when it exits first."""
    async with asyncio.timeout(30):
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            log.append(text)
            found = _LISTENING.search(text)
            if found:
                return int(found.group(1))
    return None


def proxy_command(python: str, args: Sequence[str]) -> str:
    """A ProxyCommand line: ``python -m visiona forward --stdio %h PORT`` (shell-quoted)."""
    import shlex  # noqa: PLC0415 - only here

    return " ".join(shlex.quote(part) if part != "%h" else part for part in [python, *args])
