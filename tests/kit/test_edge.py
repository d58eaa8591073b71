"""The API in its ecosystem (issue 11, item 4) against a live server on loopback.

Offline /docs and /redoc, OpenAPI security schemes, HEAD like GET, 405 with Allow,
CORS for listed origins only, target_chip in any case.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit.live import serve_in_thread
from tests.support.api import PASSWORD
from tests.support.models import nef
from tests.support.settings import make_settings
from visiona.app import create_app
from visiona.kit import migrate

ORIGIN = "https://console.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live server (SQLite) allowing one CORS origin."""
    data = tmp_path_factory.mktemp("edge")
    url = f"sqlite+aiosqlite:///{data / 'visiona.db'}"
    migrate.upgrade(url)
    settings = make_settings(database_url=url, data_dir=data, cors_origins=[ORIGIN])
    with serve_in_thread(create_app(settings)) as live:
        yield live.url


@pytest.fixture
def token(server: str) -> str:
    """A signed-in user's bearer token."""
    email = f"edge-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "password": PASSWORD, "name": "Edge"}
    assert httpx.post(f"{server}/api/v1/auth/register", json=body, timeout=30).status_code == 201
    login = httpx.post(
        f"{server}/api/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=30
    )
    return str(login.json()["token"])


def test_docs_and_redoc_load_every_asset_from_the_server(server: str) -> None:
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{server}{page}", timeout=30).text
        sources = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert sources, html
        for source in sources:
            assert source.startswith("/"), f"{page} loads {source} from elsewhere"
            asset = httpx.get(f"{server}{source}", timeout=30)
            assert asset.status_code == 200, source
            assert len(asset.content) > 100
        assert "cdn" not in html.lower()
    assert "/openapi.json" in httpx.get(f"{server}/docs", timeout=30).text


def test_openapi_declares_bearer_and_cookie_security(server: str) -> None:
    spec = httpx.get(f"{server}/openapi.json", timeout=30).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerToken"] == {**schemes["bearerToken"], "type": "http", "scheme": "bearer"}
    assert schemes["sessionCookie"]["in"] == "cookie"
    assert schemes["sessionCookie"]["name"] == "visiona_session"
    models = spec["paths"]["/api/v1/models"]["get"]
    assert models["security"] == [{"bearerToken": []}, {"sessionCookie": []}]
    assert spec["paths"]["/api/v1/agent/status"]["post"]["security"] == [{"bearerToken": []}]
    assert "security" not in spec["paths"]["/api/v1/auth/login"]["post"]


def test_head_works_wherever_get_does(server: str, token: str, tmp_path: Path) -> None:
    health = httpx.head(f"{server}/healthz")
    assert health.status_code == 200
    assert health.content == b""
    headers = {"Authorization": f"Bearer {token}"}
    content = nef(3 * 1024 * 1024)
    upload = httpx.post(
        f"{server}/api/v1/models",
        files={"file": ("big.nef", content)},
        data={"target_chip": "kl520"},
        headers=headers,
        timeout=30,
    )
    assert upload.status_code == 201, upload.text
    model_id = upload.json()["id"]
    head = httpx.head(f"{server}/api/v1/models/{model_id}/file", headers=headers)
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(content)
    get = httpx.get(f"{server}/api/v1/models/{model_id}/file", headers=headers, timeout=30)
    assert get.content == content  # the server is still fine after a cut-short HEAD
    assert httpx.head(f"{server}/api/v1/models", headers=headers).status_code == 200
    assert httpx.head(f"{server}/api/v1/models").status_code == 401


def test_405_carries_an_allow_header(server: str, token: str) -> None:
    response = httpx.put(f"{server}/healthz", timeout=30)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    models = httpx.request(
        "PUT", f"{server}/api/v1/models", headers={"Authorization": f"Bearer {token}"}
    )
    assert models.status_code == 405


def _allow(response: httpx.Response) -> set[str]:
    return set(response.headers["allow"].replace(" ", "").split(","))


def test_405_allow_lists_the_methods_of_every_route_of_the_path(server: str, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    # GET /models and POST /models are two routes of one path
    models = httpx.request("PUT", f"{server}/api/v1/models", headers=auth)
    assert models.status_code == 405
    assert _allow(models) == {"GET", "HEAD", "POST"}
    # GET, PATCH and DELETE /models/{id}: three routes; the id need not exist
    one = httpx.put(f"{server}/api/v1/models/{uuid.uuid4()}", headers=auth, timeout=30)
    assert one.status_code == 405
    assert _allow(one) == {"DELETE", "GET", "HEAD", "PATCH"}
    # HEAD is answered like GET, so a path without GET gains no HEAD
    login = httpx.get(f"{server}/api/v1/auth/login", timeout=30)
    assert login.status_code == 405
    assert _allow(login) == {"POST"}


def test_cors_answers_listed_origins_only(server: str) -> None:
    preflight = httpx.options(
        f"{server}/api/v1/models",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert preflight.headers["access-control-allow-credentials"] == "true"
    simple = httpx.get(f"{server}/healthz", headers={"Origin": ORIGIN}, timeout=30)
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.get(f"{server}/healthz", headers={"Origin": "https://evil.example"}, timeout=30)
    assert "access-control-allow-origin" not in other.headers
    refused = httpx.options(
        f"{server}/api/v1/models",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


def test_no_cors_by_default(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'v.db'}"
    migrate.upgrade(url)
    with serve_in_thread(create_app(make_settings(database_url=url, data_dir=tmp_path))) as live:
        response = httpx.get(f"{live.url}/healthz", headers={"Origin": ORIGIN}, timeout=30)
        assert "access-control-allow-origin" not in response.headers


def test_target_chip_is_case_insensitive_on_every_route(server: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    upload = httpx.post(
        f"{server}/api/v1/models",
        files={"file": ("c.nef", nef(1000))},
        data={"target_chip": "KL720"},
        headers=headers,
        timeout=30,
    )
    assert upload.status_code == 201, upload.text
    assert upload.json()["target_chip"] == "kl720"
    for chip in ("KL720", "kl720", "Kl720"):
        listed = httpx.get(
            f"{server}/api/v1/models", params={"chip": chip}, headers=headers, timeout=30
        )
        assert listed.status_code == 200, listed.text
        assert [m["id"] for m in listed.json()["items"]] == [upload.json()["id"]]
    bad = httpx.get(
        f"{server}/api/v1/models", params={"chip": "KL999"}, headers=headers, timeout=30
    )
    assert bad.status_code == 422
