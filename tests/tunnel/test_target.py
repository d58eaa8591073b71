"""The device's request target is derived from the decoded route path, canonically.

Whatever the client's encoding (``%2F``, ``%2e``, ``//``, mixed case), the device
sees one target, never anything above the proxy root, never ``/visiona/``.
"""

from __future__ import annotations

import pytest

from visiona.tunnel.errors import ReservedPathError
from visiona.tunnel.target import (
    SANDBOX_POLICY,
    InvalidProxyPathError,
    cloud_prefix,
    device_target,
    sandboxed_headers,
)


@pytest.mark.parametrize(
    ("path", "query", "target"),
    [
        ("", b"", b"/"),
        ("status", b"", b"/status"),
        ("dir/", b"", b"/dir/"),
        ("a b/c", b"x=1&y=%2F", b"/a%20b/c?x=1&y=%2F"),
        ("a//b", b"", b"/a/b"),
        ("/etc/passwd", b"", b"/etc/passwd"),  # /proxy//etc/passwd
        ("./a/./b/.", b"", b"/a/b/"),
        ("caf\u00e9", b"", b"/caf%C3%A9"),
        ("a%b", b"", b"/a%25b"),  # /proxy/a%25b: the percent is data, re-encoded
        ("a?b", b"q", b"/a%3Fb?q"),  # an encoded ? stays in the path
        ("visionary/x", b"", b"/visionary/x"),
        ("x/visiona/models", b"", b"/x/visiona/models"),
    ],
)
def test_target_is_the_canonical_encoding_of_the_decoded_path(
    path: str, query: bytes, target: bytes
) -> None:
    assert device_target(path, query) == target


@pytest.mark.parametrize(
    "path",
    ["..", "../../etc/passwd", "a/../../b", "a/..", "a/\x00b", "a\r\nHost: x", "\x7f"],
)
def test_dot_dot_and_control_characters_are_refused(path: str) -> None:
    with pytest.raises(InvalidProxyPathError):
        device_target(path, b"")


@pytest.mark.parametrize(
    "path",
    [
        "visiona/models/x",
        "visiona",
        "visiona/",
        "VISIONA/models",
        "ViSiOnA/x",
        "/visiona/x",
        "./visiona/x",
        "//visiona//x",
    ],
)
def test_reserved_prefix_is_refused_in_every_spelling(path: str) -> None:
    with pytest.raises(ReservedPathError):
        device_target(path, b"")


def test_cloud_prefix_is_the_decoded_route_path_before_the_device_path() -> None:
    route = "/api/v1/devices/d1/proxy/a/b"
    assert cloud_prefix("a/b", route) == "/api/v1/devices/d1/proxy"
    assert cloud_prefix("", "/api/v1/devices/d1/proxy/") == "/api/v1/devices/d1/proxy"


def test_sandboxed_headers_add_the_policy_and_drop_cookies_and_sniffing_overrides() -> None:
    device = [
        (b"content-type", b"text/html"),
        (b"set-cookie", b"visiona_session=fixed; Path=/"),
        (b"x-content-type-options", b"none"),
        (b"content-security-policy", b"default-src 'self'"),
        (b"date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
        (b"server", b"device/1.0"),
    ]
    headers = sandboxed_headers(device)
    assert (b"set-cookie", b"visiona_session=fixed; Path=/") not in headers
    assert [v for k, v in headers if k == b"x-content-type-options"] == [b"nosniff"]
    policies = [v for k, v in headers if k == b"content-security-policy"]
    assert policies == [b"default-src 'self'", SANDBOX_POLICY]
    assert b"allow-same-origin" not in SANDBOX_POLICY
    assert SANDBOX_POLICY.startswith(b"sandbox")
    assert (b"date", b"Mon, 01 Jan 2024 00:00:00 GMT") in headers
    assert (b"server", b"device/1.0") in headers
