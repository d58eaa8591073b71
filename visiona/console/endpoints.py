"""Console pages (HTML) and the two small JSON documents their scripts poll.

Every handler reads through the features' services and hands the rows to a
template; changes are made by the pages' scripts through the JSON API.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any

from annotated_types import MinLen
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from visiona.apikeys import service as api_keys
from visiona.audit import service as audit
from visiona.audit.catalogue import ACTIONS
from visiona.audit.repository import EventFilter
from visiona.auth import repository as users
from visiona.auth.dependencies import Caller, CurrentCaller, current_caller
from visiona.auth.schemas import RegisterRequest
from visiona.console.dependencies import ORG_COOKIE, ConsolePage, ConsolePrincipal, shell_of
from visiona.console.security import DEFAULT_NEXT, ConsoleRoute, safe_next
from visiona.console.views import (
    CATEGORIES,
    DELIVERY_STATES,
    SCOPE_HINTS,
    STATUS_FILTERS,
    WEBHOOK_FAMILIES,
    category_actions,
    environment,
    every_row,
    matches,
    recent_conflict,
    sorted_newest_first,
    tunnel_badge,
)
from visiona.deployments import service as deployments
from visiona.devices import fleet_service as fleet
from visiona.devices import service as devices
from visiona.devices.dependencies import DevicesDep
from visiona.devices.selectors import MAX_LENGTH, InvalidSelectorError, Selector
from visiona.devices.service import Devices
from visiona.devices.tags import BUILTIN_KEYS
from visiona.kit.clock import utcnow
from visiona.kit.deps import Conn, SettingsDep
from visiona.kit.errors import NotFoundError, UnauthorizedError
from visiona.kit.pagination import Page, PageRequest
from visiona.models import service as models
from visiona.models.dependencies import StorageDep
from visiona.models.endpoints import attachment_disposition
from visiona.models.schemas import ModelSource, TargetChip
from visiona.orgs import service as orgs
from visiona.orgs.dependencies import MembershipsDep
from visiona.orgs.permissions import Permission, Role, permissions_of, scopes_permissions
from visiona.rollouts import service as rollouts
from visiona.rollouts.planner import STATES as ROLLOUT_DEVICE_STATES
from visiona.rollouts.service import RolloutView
from visiona.tokens import service as token_service
from visiona.webhooks import service as webhooks

if TYPE_CHECKING:
    from jinja2 import Environment

    from visiona.apikeys.repository import ApiKey
    from visiona.auth.dependencies import Principal
    from visiona.devices.repository import Device
    from visiona.models.repository import Model
    from visiona.orgs.repository import Invitation
    from visiona.tokens.repository import PairingToken

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

Text = Annotated[str, Query(max_length=200)]
#: The tag selector filter (its parser bounds it; a longer one is shown as an error).
SelectorText = Annotated[str, Query(max_length=4 * MAX_LENGTH)]
PRODUCT = "visionA"


@cache
def _templates() -> Environment:
    return environment()


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """Render ``template`` with the context every page has (product name, server URL)."""
    shell = shell_of(request)
    html = (
        _templates()
        .get_template(template)
        .render(
            product=PRODUCT,
            server_url=str(request.base_url).rstrip("/"),
            path=request.url.path,
            shell=shell,
            can=shell.can if shell is not None else frozenset(),
            **context,
        )
    )
    return HTMLResponse(html, status_code=status_code)


async def _signed_in(request: Request) -> Caller | None:
    try:
        return await current_caller(request)
    except UnauthorizedError:
        return None


# -- signed out -------------------------------------------------------------------


@router.get("/")
async def home(_principal: ConsolePrincipal) -> Response:
    """The devices page is the landing page."""
    return RedirectResponse("/devices", status_code=303)


@router.get("/sign-in")
async def sign_in_page(request: Request, next: Text = "") -> Response:  # noqa: A002 - the URL's name
    """The sign-in form; a signed-in visitor goes straight on."""
    target = safe_next(next)
    if await _signed_in(request) is not None:
        return RedirectResponse(target, status_code=303)
    return render(request, "sign_in.html", next=target, title="Sign in")


@router.get("/sign-up")
async def sign_up_page(request: Request, next: Text = "") -> Response:  # noqa: A002 - the URL's name
    """The create-account form."""
    target = safe_next(next)
    if await _signed_in(request) is not None:
        return RedirectResponse(target, status_code=303)
    return render(
        request, "sign_up.html", next=target, title="Create account", password_min=_password_min()
    )


def _password_min() -> int:
    """The shortest password the API accepts, read from its request schema."""
    for rule in RegisterRequest.model_fields["password"].metadata:
        if isinstance(rule, MinLen):
            return int(rule.min_length)
    return 1


# -- devices ----------------------------------------------------------------------


async def _all_devices(
    conn: AsyncConnection, reads: Devices, org_id: uuid.UUID, selector: Selector | None = None
) -> list[Device]:
    return await every_row(lambda page: reads.list(conn, org_id, page=page, selector=selector))


async def _device_names(conn: AsyncConnection, reads: Devices, org_id: uuid.UUID) -> dict[str, str]:
    return {str(d.id): d.name for d in await _all_devices(conn, reads, org_id)}


async def _device_list(  # noqa: PLR0917 - the page's filters, one by one
    conn: AsyncConnection,
    reads: Devices,
    org_id: uuid.UUID,
    status: str,
    query: str,
    selector: str = "",
) -> dict[str, Any]:
    """The devices the filters keep: status and search in Python, the tag selector in SQL
    (a selector that does not parse is shown as an error and filters nothing)."""
    parsed, selector_error = None, None
    try:
        parsed = fleet.parse_selector(selector) if selector.strip() else None
    except InvalidSelectorError as err:
        selector_error = err.message
    everything = await _all_devices(conn, reads, org_id)
    chosen = everything if parsed is None else await _all_devices(conn, reads, org_id, parsed)
    shown = [device for device in chosen if matches(device, status, query.strip())]
    return {
        "devices": shown,
        "device_tags": await fleet.tags_of(conn, shown),
        "total": len(everything),
        "status": status,
        "q": query,
        "selector": selector,
        "selector_error": selector_error,
    }


def _status_filter(value: str) -> str:
    return value if value in STATUS_FILTERS else "all"


@router.get("/devices")
async def devices_page(  # noqa: PLR0917 - FastAPI injects query parameters by name
    request: Request,
    principal: ConsolePage,
    conn: Conn,
    reads: DevicesDep,
    status: Text = "all",
    q: Text = "",
    selector: SelectorText = "",
) -> Response:
    """The devices table with its filters (status, search, tag selector: all kept in the
    URL), bulk unpair and connect dialog."""
    listing = await _device_list(conn, reads, principal.org_id, _status_filter(status), q, selector)
    return render(request, "devices.html", title="Devices", nav="devices", **listing)


@router.get("/devices.json")
async def devices_rows(  # noqa: PLR0917 - FastAPI injects query parameters by name
    principal: ConsolePrincipal,
    conn: Conn,
    reads: DevicesDep,
    status: Text = "all",
    q: Text = "",
    selector: SelectorText = "",
) -> Response:
    """What the devices page polls: the filtered rows as HTML plus a summary per device."""
    listing = await _device_list(conn, reads, principal.org_id, _status_filter(status), q, selector)
    shown: list[Device] = listing["devices"]
    html = (
        _templates()
        .get_template("_device_rows.html")
        .render(devices=shown, device_tags=listing["device_tags"])
    )
    summary = [{"id": str(d.id), "name": d.name, "status": tunnel_badge(d).label} for d in shown]
    return JSONResponse({"total": listing["total"], "devices": summary, "rows_html": html})


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


@router.get("/devices/{device_id}")
async def device_page(
    request: Request, device_id: str, principal: ConsolePage, conn: Conn, reads: DevicesDep
) -> Response:
    """One device: details, rename, session tokens, deployments, deploy form, unpair."""
    owner, parsed = principal.org_id, _uuid(device_id)
    try:
        device = None if parsed is None else await reads.get(conn, owner, parsed)
    except NotFoundError:
        device = None
    if device is None or parsed is None:
        return render(request, "not_found.html", 404, title="Not found", what="device", nav="")

    sessions = await every_row(
        lambda page: token_service.list_session_tokens(conn, owner, parsed, page)
    )
    every_model = await every_row(
        lambda page: models.list_models(conn, owner, chip=None, source=None, page=page)
    )
    history = await deployments.list_deployments(conn, owner, parsed, PageRequest(limit=50))
    events = await audit.list_events(
        conn, EventFilter(org_id=owner, device_id=parsed), PageRequest(limit=50)
    )
    chip = (device.device_type or "").strip().lower()
    model_names = {str(m.id): m.name for m in every_model}
    return render(
        request,
        "device.html",
        tags=(await fleet.tags_of(conn, [device]))[device.id],
        builtin_tags=BUILTIN_KEYS,
        current_model=_model_label(device.current_model_id, model_names),
        previous_model=_model_label(device.previous_model_id, model_names),
        title=device.name,
        nav="devices",
        device=device,
        session_tokens=sorted_newest_first(sessions),
        deployments=history.items,
        model_names=model_names,
        deployable=[m for m in every_model if m.target_chip == chip],
        chip=chip,
        history=events.items,
        conflict=recent_conflict(events.items),
        user_id=principal.user_id,
    )


def _model_label(model_id: uuid.UUID | None, names: dict[str, str]) -> str | None:
    """A model's name (its id when it is not one of the user's models), or None."""
    if model_id is None:
        return None
    return names.get(str(model_id), str(model_id))


# -- models -----------------------------------------------------------------------


@router.get("/models")
async def models_page(  # noqa: PLR0917 - FastAPI injects query parameters by name
    request: Request,
    principal: ConsolePage,
    conn: Conn,
    settings: SettingsDep,
    chip: Text = "",
    source: Text = "",
) -> Response:
    """The models list with chip and source filters, and the upload form."""
    chips = [c.value for c in TargetChip]
    sources = [s.value for s in ModelSource]
    chip = chip if chip in chips else ""
    source = source if source in sources else ""

    def fetch(page: PageRequest) -> Awaitable[Page[Model]]:
        return models.list_models(
            conn,
            principal.org_id,
            chip=chip or None,
            source=ModelSource(source) if source else None,
            page=page,
        )

    return render(
        request,
        "models.html",
        title="Models",
        nav="models",
        models=await every_row(fetch),
        chips=chips,
        sources=sources,
        chip=chip,
        source=source,
        max_bytes=settings.model_max_bytes,
    )


@router.get("/models/{model_id}/file")
async def model_file(
    model_id: uuid.UUID, principal: ConsolePrincipal, conn: Conn, storage: StorageDep
) -> Response:
    """The Download link of the models page: the whole file of a model of the chosen
    organisation (a plain link cannot send ``X-Visiona-Org``; ``models:download``, so a
    viewer gets 403 as from the API)."""
    principal.require(Permission.MODELS_DOWNLOAD)
    model = await models.require_model(conn, principal.org_id, model_id)
    opened = await models.open_file(storage, model, 0, None)
    headers = {
        "Content-Length": str(opened.end - opened.start),
        "Content-Disposition": attachment_disposition(model.name),
        "ETag": f'"{model.sha256}"',
    }
    return StreamingResponse(opened.chunks, headers=headers, media_type="application/octet-stream")


# -- rollouts ---------------------------------------------------------------------


async def _all_models(conn: AsyncConnection, org_id: uuid.UUID) -> list[Model]:
    return await every_row(
        lambda page: models.list_models(conn, org_id, chip=None, source=None, page=page)
    )


@router.get("/rollouts")
async def rollouts_page(
    request: Request, principal: ConsolePage, conn: Conn, reads: DevicesDep
) -> Response:
    """The organisation's rollouts (newest first, with their progress) and, for a role
    with ``deploy``, the form creating one (made by the page's script through the API)."""
    org_id = principal.org_id
    found = await every_row(lambda page: rollouts.list_rollouts(conn, org_id, page))
    every_model = await _all_models(conn, org_id)
    devices_ = await _all_devices(conn, reads, org_id) if principal.can(Permission.DEPLOY) else []
    return render(
        request,
        "rollouts.html",
        title="Rollouts",
        nav="rollouts",
        rollouts=found,
        model_names={str(m.id): m.name for m in every_model},
        deployable=[m for m in every_model if m.storage_key and m.sha256],
        devices=devices_,
    )


def _rollout_context(
    found: RolloutView, state: str, items: list[Any], names: dict[str, str]
) -> dict[str, Any]:
    counts = found.counts
    return {
        "rollout": found.rollout,
        "counts": {s: counts[s] for s in ROLLOUT_DEVICE_STATES},
        "total": counts.total,
        "batches": sorted((b, c) for b, c in found.by_batch.items() if b is not None),
        "unbatched": sum(found.by_batch.get(None, {}).values()),
        "finished": found.rollout.state in rollouts.FINISHED,
        "state": state,
        "items": items,
        "device_names": names,
    }


async def _rollout_detail(
    conn: AsyncConnection, reads: Devices, org_id: uuid.UUID, rollout_id: str, state: str
) -> dict[str, Any] | None:
    """What the rollout page and its poll show (None: no such rollout here)."""
    parsed = _uuid(rollout_id)
    if parsed is None:
        return None
    try:
        found = await rollouts.get_rollout(conn, org_id, parsed)
    except NotFoundError:
        return None
    chosen = state if state in ROLLOUT_DEVICE_STATES else ""
    items = await every_row(
        lambda page: rollouts.list_devices(conn, org_id, parsed, chosen or None, page)
    )
    names = await _device_names(conn, reads, org_id)
    return _rollout_context(found, chosen, items, names)


@router.get("/rollouts/{rollout_id}")
async def rollout_page(  # noqa: PLR0917 - FastAPI injects each by name
    request: Request,
    rollout_id: str,
    principal: ConsolePage,
    conn: Conn,
    reads: DevicesDep,
    state: Text = "",
) -> Response:
    """One rollout: its state (and why it paused), its batches' progress (polled), its
    devices filtered by state (kept in the URL), and pause/resume/cancel/rollback for a
    role with ``deploy`` (the API refuses them to the others all the same)."""
    detail = await _rollout_detail(conn, reads, principal.org_id, rollout_id, state)
    if detail is None:
        return render(request, "not_found.html", 404, title="Not found", what="rollout", nav="")
    every_model = await _all_models(conn, principal.org_id)
    model_names = {str(m.id): m.name for m in every_model}
    rollout = detail["rollout"]
    return render(
        request,
        "rollout.html",
        title=_rollout_title(rollout.model_id, rollout.rollback_of is not None, model_names),
        nav="rollouts",
        model_names=model_names,
        states=ROLLOUT_DEVICE_STATES,
        **detail,
    )


@router.get("/rollouts/{rollout_id}/progress.json")
async def rollout_progress(
    rollout_id: str,
    principal: ConsolePrincipal,
    conn: Conn,
    reads: DevicesDep,
    state: Text = "",
) -> Response:
    """What the rollout page polls: its state, the progress panel (with the buttons the
    role and the state allow) and the filtered device rows, as HTML."""
    detail = await _rollout_detail(conn, reads, principal.org_id, rollout_id, state)
    if detail is None:
        raise NotFoundError("Rollout not found.")
    can = frozenset(p.value for p in principal.permissions)
    progress = _templates().get_template("_rollout_progress.html").render(can=can, **detail)
    rows = _templates().get_template("_rollout_device_rows.html").render(**detail)
    rollout = detail["rollout"]
    return JSONResponse(
        {
            "state": rollout.state,
            "reason": rollout.reason,
            "counts": detail["counts"],
            "progress_html": progress,
            "rows_html": rows,
        }
    )


def _rollout_title(model_id: uuid.UUID | None, rollback: bool, names: dict[str, str]) -> str:
    """A rollout's heading: the model it deploys, or that it rolls back."""
    if rollback or model_id is None:
        return "Rollback to the previous models"
    return f"Rollout of {names.get(str(model_id), '(deleted model)')}"


# -- pairing tokens and account ------------------------------------------------------


async def _pairing_tokens(conn: AsyncConnection, org_id: uuid.UUID) -> list[PairingToken]:
    return await every_row(lambda page: token_service.list_pairing_tokens(conn, org_id, page))


@router.get("/pairing-tokens")
async def pairing_tokens_page(
    request: Request, principal: ConsolePage, conn: Conn, reads: DevicesDep
) -> Response:
    """Unused and used pairing tokens, newest first, with revoke."""
    tokens = sorted_newest_first(await _pairing_tokens(conn, principal.org_id))
    names = await _device_names(conn, reads, principal.org_id)
    return render(
        request,
        "pairing_tokens.html",
        title="Pairing tokens",
        nav="pairing-tokens",
        tokens=tokens,
        device_names=names,
    )


@router.get("/pairing-tokens/{token_id}.json")
async def pairing_token_state(token_id: str, principal: ConsolePrincipal, conn: Conn) -> Response:
    """What the connect dialog polls: whether its token was used, and by which device."""
    for token in await _pairing_tokens(conn, principal.org_id):
        if str(token.public_id) != token_id:
            continue
        device_id = token.device_id
        device: dict[str, str] | None = None
        if device_id is not None:
            try:
                found = await devices.require_device(conn, principal.org_id, device_id)
                device = {"id": str(device_id), "name": found.name}
            except NotFoundError:
                device = None
        return JSONResponse({"used": token.used_at is not None, "device": device})
    raise NotFoundError("Pairing token not found.")


@router.get("/activity")
async def activity_page(  # noqa: PLR0917 - FastAPI injects query parameters by name
    request: Request,
    principal: ConsolePage,
    conn: Conn,
    settings: SettingsDep,
    reads: DevicesDep,
    action: Text = "",
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    """The account's audit trail, newest first, 50 a page, optionally one kind of event."""
    # A kind of event (the filter's categories), or one exact action (older links).
    kinds = category_actions(action)
    if kinds is None and action not in ACTIONS:
        action = ""
    spec = EventFilter(
        org_id=principal.org_id,
        action=action if kinds is None and action else None,
        actions=kinds,
    )
    found = await audit.list_events(conn, spec, PageRequest(limit=50, cursor=cursor))
    names = await _device_names(conn, reads, principal.org_id)
    every_model = await every_row(
        lambda page: models.list_models(conn, principal.org_id, chip=None, source=None, page=page)
    )
    return render(
        request,
        "activity.html",
        title="Activity",
        nav="activity",
        events=found.items,
        next_cursor=found.next_cursor,
        action=action,
        categories=CATEGORIES,
        device_names=names,
        model_names={str(m.id): m.name for m in every_model},
        user_id=principal.user_id,
        retention_days=settings.audit_retention_days,
    )


@router.get("/account")
async def account_page(request: Request, principal: ConsolePage, conn: Conn) -> Response:
    """The signed-in user's email and name."""
    user = await users.get_by_id(conn, principal.user_id)
    if user is None:  # the account is gone; the session is meaningless
        raise UnauthorizedError("Session expired or not valid.")
    return render(request, "account.html", title="Account", nav="account", user=user)


# -- organisations: the switcher, members, invitations ---------------------------------


def _section(path: str) -> str:
    """The list page of the console section ``path`` is in (a device of one organisation
    means nothing in another): ``/devices/…`` → ``/devices``."""
    first = safe_next(path).split("?")[0].strip("/").split("/")[0]
    return f"/{first}" if first in _SECTIONS else DEFAULT_NEXT


_SECTIONS = frozenset(
    {
        "devices",
        "models",
        "rollouts",
        "pairing-tokens",
        "activity",
        "members",
        "api-keys",
        "webhooks",
        "account",
    }
)
#: Sections a role may lack (the switcher goes to the devices page instead).
_SECTION_NEEDS = {"/api-keys": Permission.API_KEYS, "/webhooks": Permission.WEBHOOKS}


@router.post("/org")
async def switch_org(  # noqa: PLR0917 - FastAPI injects each by name
    request: Request,
    caller: CurrentCaller,
    memberships: MembershipsDep,
    settings: SettingsDep,
    org_id: Annotated[str, Form(max_length=64)] = "",
    next: Annotated[str, Form(max_length=200)] = "",  # noqa: A002 - the form's name
) -> Response:
    """The organisation switcher: act in ``org_id`` from now on (the ``visiona_org``
    cookie), back on the section's list page. Cookie-authenticated, so same-origin only
    (the caller check, as every console write); an organisation the user is not a member
    of is refused with the same 404 page as one that does not exist."""
    chosen = _uuid(org_id.strip())
    access = None if chosen is None else await memberships.resolve(caller.user_id, chosen, None)
    if access is None:
        return render(request, "not_found.html", 404, title="Not found", what="organisation")
    target = _section(next)
    needed = _SECTION_NEEDS.get(target)
    if needed is not None and needed not in permissions_of(access.role):
        target = DEFAULT_NEXT
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        ORG_COOKIE,
        str(access.org_id),
        max_age=settings.session_absolute_ttl,
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
        path="/",
    )
    return response


@router.get("/members")
async def members_page(request: Request, principal: ConsolePage, conn: Conn) -> Response:
    """The organisation's members and roles; admins and owners invite, change roles,
    remove and see the pending invitations; anyone may leave (not their personal one)."""
    org_id = principal.org_id
    members = await every_row(lambda page: orgs.list_members(conn, org_id, principal.user_id, page))
    invitations: list[Invitation] = []
    if principal.can(Permission.MEMBERS):
        every = await every_row(
            lambda page: orgs.list_invitations(conn, org_id, principal.user_id, page)
        )
        now = utcnow()
        invitations = [
            i for i in every
            if i.accepted_at is None and i.revoked_at is None and i.expires_at > now
        ]  # fmt: skip
    mine = await orgs.membership(conn, org_id, principal.user_id)
    grantable = [r.value for r in Role if principal.can(Permission.ORG) or r != Role.OWNER]
    return render(
        request,
        "members.html",
        title="Members",
        nav="members",
        org=mine.org,
        members=members,
        invitations=invitations,
        user_id=principal.user_id,
        grantable=grantable,
        invitable=[r for r in grantable if r != Role.OWNER.value],
    )


@router.get("/invitations/accept")
async def accept_invitation_page(
    request: Request,
    caller: CurrentCaller,
    conn: Conn,
    token: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    """An invitation link: who invited you where, with which role, and a button to
    join; or why it cannot be accepted (used, expired, for another email, a member
    already), in words."""
    user = await users.get_by_id(conn, caller.user_id)
    if user is None:
        raise UnauthorizedError("Session expired or not valid.")
    found = await orgs.invitation_preview(conn, caller.user_id, user.email, token.strip())
    return render(
        request,
        "accept_invitation.html",
        title="Invitation",
        token=token.strip(),
        user=user,
        preview=found,
    )


# -- API keys --------------------------------------------------------------------------


def _refused(request: Request, principal: Principal, permission: Permission) -> Response:
    """The console's 403 page: what the role lacks, in words."""
    return render(
        request,
        "forbidden.html",
        403,
        title="Not allowed",
        nav="",
        role=principal.role.value if principal.role is not None else "",
        permission=permission.value,
    )


async def _creator_names(
    conn: AsyncConnection, org_id: uuid.UUID, user_id: uuid.UUID, keys: list[ApiKey]
) -> dict[str, str]:
    """Each key's creator by name (their email when they have none); a creator who left
    the organisation is still named."""
    members = await every_row(lambda page: orgs.list_members(conn, org_id, user_id, page))
    names = {str(m.user_id): m.name or m.email for m in members}
    for creator in {k.created_by for k in keys if str(k.created_by) not in names}:
        user = await users.get_by_id(conn, creator)
        names[str(creator)] = (user.name or user.email) if user is not None else "A former user"
    return names


@router.get("/api-keys")
async def api_keys_page(request: Request, principal: ConsolePage, conn: Conn) -> Response:
    """The organisation's API keys (newest first, revoked and expired ones too), the
    form that creates one (its key shown once) and revoke; for roles holding
    ``api_keys`` (admins and owners), others get the 403 page."""
    if not principal.can(Permission.API_KEYS):
        return _refused(request, principal, Permission.API_KEYS)
    keys = await every_row(lambda page: api_keys.list_keys(conn, principal.org_id, page))
    scopes = [
        {
            "name": scope,
            "hint": SCOPE_HINTS.get(scope, ""),
            "allowed": scopes_permissions({scope}) <= principal.permissions,
        }
        for scope in api_keys.SCOPES
    ]
    return render(
        request,
        "api_keys.html",
        title="API keys",
        nav="api-keys",
        keys=keys,
        scopes=scopes,
        creators=await _creator_names(conn, principal.org_id, principal.user_id, keys),
        user_id=principal.user_id,
        max_days=api_keys.MAX_DAYS,
    )


# -- webhooks --------------------------------------------------------------------------

#: How many deliveries the endpoint page shows (the CLI and the API page through all).
DELIVERY_LOG_ROWS = 100


@router.get("/webhooks")
async def webhooks_page(request: Request, principal: ConsolePage, conn: Conn) -> Response:
    """The organisation's webhook endpoints with their state (a disabled one says why),
    the form that creates one (its secret shown once), and test, disable, re-enable and
    delete; for roles holding ``webhooks`` (admins and owners), others get the 403 page."""
    if not principal.can(Permission.WEBHOOKS):
        return _refused(request, principal, Permission.WEBHOOKS)
    found = await every_row(lambda page: webhooks.list_endpoints(conn, principal.org_id, page))
    return render(
        request,
        "webhooks.html",
        title="Webhooks",
        nav="webhooks",
        endpoints=found,
        families=WEBHOOK_FAMILIES,
        max_endpoints=webhooks.MAX_ENDPOINTS,
    )


@router.get("/webhooks/{webhook_id}")
async def webhook_page(
    request: Request, webhook_id: str, principal: ConsolePage, conn: Conn, state: Text = ""
) -> Response:
    """One endpoint: its state and settings, and its delivery log (newest first, polled),
    filtered by state (kept in the URL), with test and re-enable buttons."""
    if not principal.can(Permission.WEBHOOKS):
        return _refused(request, principal, Permission.WEBHOOKS)
    parsed = _uuid(webhook_id)
    endpoint = None
    if parsed is not None:
        try:
            endpoint = await webhooks.get_endpoint(conn, principal.org_id, parsed)
        except NotFoundError:
            endpoint = None
    if endpoint is None or parsed is None:
        return render(
            request, "not_found.html", 404, title="Not found", what="webhook endpoint", nav=""
        )
    chosen = state if state in DELIVERY_STATES else ""
    log = await webhooks.list_deliveries(
        conn,
        principal.org_id,
        parsed,
        PageRequest(limit=DELIVERY_LOG_ROWS),
        state=chosen or None,
    )
    return render(
        request,
        "webhook.html",
        title=endpoint.url,
        nav="webhooks",
        endpoint=endpoint,
        deliveries=log.items,
        more=log.next_cursor is not None,
        state=chosen,
        states=DELIVERY_STATES,
    )
