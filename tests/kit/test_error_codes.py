"""Every error code the server can emit is in docs/api-spec.md's error table, with its status.

The codes are collected from the code itself: every :class:`AppError` subclass in
the package (all modules imported) and every literal ``"code": "..."`` in its source.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import httpx
import pytest

import visiona
from tests.support.api import signup
from visiona.kit.errors import AppError

ROOT = Path(__file__).resolve().parents[2]
_ROW = re.compile(r"^\| (\d{3}) \| `([a-z_]+)` \|")
_LITERAL = re.compile(r"""["']code["']\s*:\s*["']([a-z_]+)["']""")


def _documented() -> set[tuple[int, str]]:
    text = (ROOT / "docs" / "api-spec.md").read_text()
    section = text.split("### Status and error codes", 1)[1].split("\n## ", 1)[0]
    return {(int(m[1]), m[2]) for line in section.splitlines() if (m := _ROW.match(line))}


def _subclasses(cls: type[AppError]) -> set[type[AppError]]:
    found: set[type[AppError]] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def _emitted_classes() -> set[tuple[int, str]]:
    for module in pkgutil.walk_packages(visiona.__path__, "visiona."):
        # __main__ runs the CLI; the migrations run only inside alembic.
        if not module.name.endswith("__main__") and ".migrations" not in module.name:
            importlib.import_module(module.name)
    classes: set[type[AppError]] = {AppError, *_subclasses(AppError)}
    return {(err.status_code, err.code) for err in classes}


def _literal_codes() -> set[str]:
    return {
        code
        for path in (ROOT / "visiona").rglob("*.py")
        for code in _LITERAL.findall(path.read_text())
    }


def test_every_error_class_is_documented_with_its_status() -> None:
    missing = _emitted_classes() - _documented()
    assert not missing, f"not in docs/api-spec.md's error table: {sorted(missing)}"


def test_every_literal_error_code_is_documented() -> None:
    documented = {code for _, code in _documented()}
    missing = _literal_codes() - documented
    assert not missing, f"not in docs/api-spec.md's error table: {sorted(missing)}"


def test_the_table_lists_no_code_the_server_cannot_emit() -> None:
    emitted = {code for _, code in _emitted_classes()} | _literal_codes()
    stale = {code for _, code in _documented()} - emitted
    assert not stale, f"documented but never emitted: {sorted(stale)}"


@pytest.mark.parametrize(
    "body",
    [b"[" * 10_000 + b"]" * 10_000, b'{"email": "\xff\xfe"}', b'{"a":' * 5000 + b"1" + b"}" * 5000],
    ids=["deep-array", "invalid-utf8", "deep-object"],
)
async def test_unparsable_json_bodies_are_bad_request(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post(
        "/api/v1/auth/login", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_request"


@pytest.mark.parametrize(
    "labels",
    ["[" * 10_000 + "]" * 10_000, '["a", ' + "[" * 40 + "]" * 40 + "]"],
    ids=["10000-deep", "40-deep"],
)
async def test_deeply_nested_labels_are_a_422(client: httpx.AsyncClient, labels: str) -> None:
    user = await signup(client)
    response = await client.post(
        "/api/v1/models",
        headers=user.headers,
        data={"target_chip": "kl520", "labels": labels},
        files={"file": ("m.nef", b"x" * 100, "application/octet-stream")},
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["fields"][0]["loc"] == ["body", "labels"]
