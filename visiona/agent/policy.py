"""The agent's policy: which requests from the cloud may reach the local service.

The user who runs an agent on their own PC bounds what the cloud may reach there
with allow rules, ``METHOD PATH-GLOB`` (``visiona agent --allow 'GET /v1/*'``,
repeatable, or ``allow = [...]`` in the ``--config`` TOML file):

- ``METHOD`` is an HTTP method (any letter case) or ``*`` for every method;
- ``PATH-GLOB`` starts with ``/``; ``*`` matches any run of characters, ``/``
  included (``/v1/*`` matches ``/v1/a`` and ``/v1/a/b``, not ``/v1``), ``?`` one
  character; everything else is literal. The query string is not matched.

No rule at all: every stream is forwarded as it is (nothing is parsed beyond the
reserved-path check). With rules, a path under ``/visiona/`` (any letter case) is
never forwarded, and the request line of each stream is read and its
path normalised before matching: percent-decoded (as UTF-8), ``//`` and ``.``
segments dropped, ``..`` segments applied; a path that climbs above the root, holds
a control character or is not origin-form is refused. A refused request is answered
by the agent itself, 403 ``{"error": {"code": "forbidden_by_agent", ...}}`` with the
``X-Visiona-Refused: policy`` header, and never reaches the local service. An allowed
one is forwarded with its target rewritten canonically (the path that matched is the
path the local service sees).

TCP ports are a separate list: ``--allow-port 22`` (repeatable, or ``allow_ports =
[22, 5900]`` in the TOML file) lets the cloud open raw byte streams to
``127.0.0.1:22`` (``GET /visiona/tcp/{port}`` streams, :mod:`visiona.agent.tcp`). No
port is allowed by default, and the HTTP rules do not govern them.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from visiona.wire import REFUSED_HEADER, RESERVED_PREFIX

__all__ = ["REFUSED_HEADER", "Policy", "PolicyError", "RefusedError", "Rule"]
RESERVED_SEGMENT = RESERVED_PREFIX.strip("/")
_METHOD = re.compile(r"^[A-Za-z]{1,20}$|^\*$")
# RFC 3986 pchar minus the percent sign (re-encoded from the decoded text), as the cloud does.
_SAFE = "!$&'()*+,;=:@-._~"
# A target with nothing to normalise: segments of safe characters, none empty (a trailing
# slash aside) and none starting with a dot (so no ``.``/``..``), no percent sign.
_PLAIN = re.compile(
    rb"((?:/[A-Za-z0-9!$&'()*+,;=:@_~-][A-Za-z0-9!$&'()*+,;=:@_~.-]*)*/?)(?:\?([^#\s]*))?"
)


class PolicyError(ValueError):
    """A rule or a config file that cannot be used (the message says which and why)."""


class RefusedError(Exception):
    """A request the policy refuses: answered by the agent with ``status`` and ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        """Remember the answer to give."""
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Rule:
    """One allow rule: a method (``*`` = any) and a path glob."""

    method: str
    glob: str
    _regex: re.Pattern[str] = field(compare=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> Rule:
        """``'GET /v1/*'`` → a rule; :class:`PolicyError` when malformed."""
        parts = text.split()
        if len(parts) != 2:
            raise PolicyError(f"an allow rule is 'METHOD /path-glob', got {text!r}")
        method, glob = parts
        if not _METHOD.match(method):
            raise PolicyError(f"bad method in allow rule {text!r} (a method name or *)")
        if not glob.startswith("/"):
            raise PolicyError(f"the path of allow rule {text!r} must start with /")
        pattern = "".join(
            ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in glob
        )
        return cls(method.upper(), glob, re.compile(pattern, re.DOTALL))

    def matches(self, method: str, path: str) -> bool:
        """Whether ``method`` (upper case) and the normalised ``path`` are allowed."""
        return (self.method in {"*", method}) and self._regex.fullmatch(path) is not None

    def __str__(self) -> str:
        """The rule as written on the command line: ``GET /v1/*``."""
        return f"{self.method} {self.glob}"


@dataclass(frozen=True)
class Policy:
    """The agent's allow rules (empty: everything forwarded), whether deployments run, and
    the TCP ports the cloud may reach on 127.0.0.1 (empty: none)."""

    rules: tuple[Rule, ...] = ()
    deploy: bool = True
    ports: frozenset[int] = frozenset()

    def allows_port(self, port: int) -> bool:
        """Whether a TCP stream to ``127.0.0.1:port`` may be opened."""
        return port in self.ports

    @property
    def filtering(self) -> bool:
        """Whether streams must be checked at all (False: the fast path, no parsing)."""
        return bool(self.rules)

    def describe(self) -> dict[str, Any]:
        """What ``visiona agent status`` shows: the rules as text, the deploy switch and the
        allowed TCP ports."""
        return {
            "allow": [str(rule) for rule in self.rules],
            "deploy": self.deploy,
            "allow_ports": sorted(self.ports),
        }

    def check(self, request_line: bytes) -> bytes:
        """The canonical request line to forward; :class:`RefusedError` when refused.

        ``request_line`` is ``METHOD SP target SP version`` without its CRLF.
        """
        method, target, version = _split_request_line(request_line)
        path, canonical = canonical_target(target)
        if path.split("/", 2)[1].lower() == RESERVED_SEGMENT:
            raise RefusedError(403, "forbidden_by_agent", "Paths under /visiona/ are the agent's.")
        if not any(rule.matches(method, path) for rule in self.rules):
            raise RefusedError(
                403, "forbidden_by_agent", f"The agent's policy does not allow {method} {path}."
            )
        return b" ".join((method.encode("ascii"), canonical, version))


def canonical_target(target: bytes) -> tuple[str, bytes]:
    """The normalised, decoded path of ``target`` and the target to forward (re-encoded).

    A target with nothing to decode or collapse is returned as it is (no work beyond
    one regular expression); any other goes through :func:`normalise_target`.
    """
    plain = _PLAIN.fullmatch(target)
    if plain is not None and plain.group(1):
        return plain.group(1).decode("ascii"), target
    path, query = normalise_target(target)
    encoded = "/".join(quote(segment, safe=_SAFE) for segment in path.split("/"))
    return path, encoded.encode("ascii") + (b"?" + query if query else b"")


def _split_request_line(line: bytes) -> tuple[str, bytes, bytes]:
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        raise RefusedError(400, "bad_request", "The request line is not valid HTTP/1.1.")
    try:
        method = parts[0].decode("ascii")
    except UnicodeDecodeError:
        raise RefusedError(400, "bad_request", "The request method is not valid.") from None
    if not method.isalpha():
        raise RefusedError(400, "bad_request", "The request method is not valid.")
    return method.upper(), parts[1], parts[2]


def normalise_target(target: bytes) -> tuple[str, bytes]:
    """The normalised, decoded path and the raw query of an origin-form ``target``.

    Percent-decoding first (``%2e%2e`` is ``..``, ``%2F`` a ``/``), then empty and
    ``.`` segments are dropped and ``..`` removes the segment before it; a trailing
    ``/`` is kept. A target that is not origin-form, is not UTF-8, holds a control
    character or climbs above the root → :class:`RefusedError`.
    """
    raw_path, _, query = target.partition(b"?")
    if not raw_path.startswith(b"/"):
        raise RefusedError(
            403, "forbidden_by_agent", "Only origin-form targets (/path) are forwarded."
        )
    try:
        decoded = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise RefusedError(400, "bad_request", "The path is not valid UTF-8.") from None
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in decoded):
        raise RefusedError(400, "bad_request", "The path holds a control character.")
    segments = decoded.split("/")
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if not kept:
                raise RefusedError(403, "forbidden_by_agent", "The path climbs above the root.")
            kept.pop()
        elif segment not in ("", "."):
            kept.append(segment)
    path = "/" + "/".join(kept)
    if kept and segments[-1] in ("", ".", ".."):
        path += "/"
    return path, query


def load_config(path: Path) -> dict[str, Any]:
    """Read the agent's TOML config file: ``allow`` (list of rules), ``deploy`` (bool),
    ``busy_probe`` (URL), ``busy_header`` (bool), ``allow_ports`` (list of TCP ports).
    Unknown keys are refused."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise PolicyError(f"cannot read the config file {path}: {err.strerror or err}") from err
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(f"the config file {path} is not valid TOML: {err}") from err
    known = {"allow", "deploy", "busy_probe", "busy_header", "allow_ports"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PolicyError(f"unknown key(s) in {path}: {', '.join(unknown)}")
    allow = data.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(rule, str) for rule in allow):
        raise PolicyError(f"'allow' in {path} must be a list of strings")
    if not isinstance(data.get("deploy", True), bool):
        raise PolicyError(f"'deploy' in {path} must be true or false")
    if not isinstance(data.get("busy_probe", ""), str):
        raise PolicyError(f"'busy_probe' in {path} must be a URL string")
    if not isinstance(data.get("busy_header", False), bool):
        raise PolicyError(f"'busy_header' in {path} must be true or false")
    ports = data.get("allow_ports", [])
    if not isinstance(ports, list) or not all(
        isinstance(port, int) and not isinstance(port, bool) for port in ports
    ):
        raise PolicyError(f"'allow_ports' in {path} must be a list of port numbers")
    return data


def parse_port(value: int | str) -> int:
    """A TCP port number (1-65535) from an option or a config value; :class:`PolicyError`."""
    try:
        port = int(value)
    except ValueError:
        raise PolicyError(f"a port is a number from 1 to 65535, got {value!r}") from None
    if not 1 <= port <= 65535:
        raise PolicyError(f"a port is a number from 1 to 65535, got {value!r}")
    return port


def build_policy(
    allow: list[str], *, deploy: bool = True, ports: list[int | str] | None = None
) -> Policy:
    """The policy of these rule texts and ports (:class:`PolicyError` on the first bad one)."""
    return Policy(
        tuple(Rule.parse(text) for text in allow),
        deploy=deploy,
        ports=frozenset(parse_port(port) for port in ports or ()),
    )
