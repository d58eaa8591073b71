"""The permission matrix: written once in code, its docs table generated from it."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from visiona.orgs.permissions import (
    ROLE_PERMISSIONS,
    SCOPE_PERMISSIONS,
    Permission,
    Role,
    at_least,
    markdown_table,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_table_is_the_generated_one() -> None:
    text = (ROOT / "docs" / "api-spec.md").read_text(encoding="utf-8")
    documented = text.split("<!-- permissions:start -->\n", 1)[1].split("<!-- permissions:end -->")[
        0
    ]
    assert documented == markdown_table()


def test_roles_nest_owner_admin_operator_viewer() -> None:
    order = [Role.OWNER, Role.ADMIN, Role.OPERATOR, Role.VIEWER]
    for stronger, weaker in pairwise(order):
        assert ROLE_PERMISSIONS[weaker] < ROLE_PERMISSIONS[stronger]
        assert at_least(stronger, weaker)
        assert not at_least(weaker, stronger)


def test_a_viewer_only_reads() -> None:
    assert ROLE_PERMISSIONS[Role.VIEWER] == {Permission.READ}


def test_an_operator_operates_devices_but_manages_no_member() -> None:
    operator = ROLE_PERMISSIONS[Role.OPERATOR]
    wanted = {Permission.DEVICES_WRITE, Permission.DEPLOY, Permission.PROXY}
    assert wanted | {Permission.MODELS_WRITE, Permission.MODELS_DOWNLOAD} <= operator
    assert Permission.MEMBERS not in operator
    assert Permission.MEMBERS in ROLE_PERMISSIONS[Role.ADMIN]
    assert Permission.ORG not in ROLE_PERMISSIONS[Role.ADMIN]
    assert Permission.ORG in ROLE_PERMISSIONS[Role.OWNER]


def test_every_api_key_scope_maps_to_known_permissions_and_never_to_the_organisation() -> None:
    assert set(SCOPE_PERMISSIONS) == {
        "read",
        "devices:write",
        "models:write",
        "deploy",
        "proxy",
        "admin",
    }
    for permissions in SCOPE_PERMISSIONS.values():
        assert Permission.ORG not in permissions
        assert Permission.READ in permissions
