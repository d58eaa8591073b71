"""The SSRF guard: internal targets are refused after resolution, unless allowed, and an
attempt connects to the address that was vetted (no second resolution to rebind)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import pytest

from visiona.kit.errors import AppError
from visiona.webhooks.ssrf import (
    WebhookTargetForbiddenError,
    WebhookTargetUnresolvedError,
    WebhookUrlInvalidError,
    check_url,
    is_forbidden,
    resolve_target,
    vet_url,
)

FORBIDDEN = [
    "http://127.0.0.1/hook",
    "http://127.8.9.10:8080/hook",
    "http://10.0.0.1/hook",
    "http://172.16.3.4/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/hook",
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",
    "http://240.0.0.1/hook",
    "http://[::1]/hook",
    "http://[::]/hook",
    "http://[fe80::1]/hook",
    "http://[fd00::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:169.254.169.254]/hook",
    "http://[64:ff9b::a00:1]/hook",  # NAT64 of 10.0.0.1
    "http://[2002:a00:1::1]/hook",  # 6to4 of 10.0.0.1
    "http://localhost/hook",  # a name resolving to 127.0.0.1
    "http://2130706433/hook",  # 127.0.0.1 as one number, resolved by getaddrinfo
]


@pytest.mark.parametrize("url", FORBIDDEN)
async def test_an_internal_target_is_refused(url: str) -> None:
    with pytest.raises(WebhookTargetForbiddenError) as refused:
        await resolve_target(url, allow_private=False)
    assert refused.value.code == "webhook_target_forbidden"
    # the message names no address the server resolved
    assert "127." not in refused.value.message
    assert "169.254" not in refused.value.message


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/hook", "http://10.0.0.1/hook", "http://localhost:8080/x"]
)
async def test_an_internal_target_is_allowed_when_the_operator_allows_it(url: str) -> None:
    target = await resolve_target(url, allow_private=True)
    assert ipaddress.ip_address(target.address).is_private


@pytest.mark.parametrize("url", ["http://8.8.8.8/hook", "https://[2606:4700:4700::1111]/x"])
async def test_a_public_address_is_allowed(url: str) -> None:
    await resolve_target(url, allow_private=False)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "file:///etc/passwd", "/relative", "http:///nohost", "x"]
)
async def test_a_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(WebhookUrlInvalidError):
        await resolve_target(url, allow_private=True)


def _resolver(addresses: list[str]) -> Any:
    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        del host
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port),
            )
            for a in addresses
        ]

    return getaddrinfo


async def test_a_name_with_one_internal_address_among_public_ones_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        asyncio.get_running_loop(), "getaddrinfo", _resolver(["8.8.8.8", "10.1.2.3"])
    )
    with pytest.raises(WebhookTargetForbiddenError):
        await resolve_target("https://hooks.example.com/x", allow_private=False)


async def test_the_target_pins_the_vetted_address_and_keeps_the_name_for_sni_and_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", _resolver(["93.184.215.14"]))
    target = await resolve_target("https://hooks.example.com:8443/in?k=v", allow_private=False)
    assert str(target.connect_url) == "https://93.184.215.14:8443/in?k=v"
    assert target.host_header == "hooks.example.com:8443"
    assert target.extensions == {"sni_hostname": "hooks.example.com"}
    assert target.safe_name == "https://hooks.example.com:8443"  # no path, no query


async def test_a_name_that_does_not_resolve_is_its_own_error() -> None:
    with pytest.raises(WebhookTargetUnresolvedError):
        await resolve_target("http://no-such-host.invalid/x", allow_private=False)


async def test_vet_url_at_create_refuses_internal_targets_and_accepts_unresolved_names() -> None:
    with pytest.raises(WebhookTargetForbiddenError):
        await vet_url("http://localhost/x", allow_private=False)
    await vet_url("http://no-such-host.invalid/x", allow_private=False)
    with pytest.raises(WebhookTargetUnresolvedError):
        await vet_url("http://no-such-host.invalid/x", allow_private=False, must_resolve=True)
    await vet_url("http://localhost/x", allow_private=True)


def test_check_url_refuses_literals_and_localhost_without_dns() -> None:
    for url in ("http://127.0.0.1/", "http://[::1]/", "http://localhost/", "http://a.localhost/"):
        with pytest.raises(WebhookTargetForbiddenError):
            check_url(url, allow_private=False)
    check_url("https://hooks.example.com/x", allow_private=False)
    with pytest.raises(WebhookUrlInvalidError):
        check_url("gopher://x/", allow_private=True)


def test_errors_are_app_errors_with_a_client_status() -> None:
    for error in (WebhookTargetForbiddenError(), WebhookUrlInvalidError()):
        assert isinstance(error, AppError)
        assert error.status_code == 422


def test_only_globally_routable_addresses_are_allowed() -> None:
    assert not is_forbidden(ipaddress.ip_address("1.1.1.1"))
    assert is_forbidden(ipaddress.ip_address("198.18.0.1"))  # benchmarking range
    assert is_forbidden(ipaddress.ip_address("fec0::1"))  # site-local
    assert is_forbidden(ipaddress.ip_address("ff02::1"))  # multicast
