"""``visiona webhooks …``: the organisation's webhook endpoints, test events and
delivery logs (needs the ``webhooks`` permission: admin or owner, or an ``admin`` key).

An endpoint is named by its id, a unique prefix of it, or its exact URL. ``--json``
prints the API's objects (one per line for lists).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from visiona.client.commands import (
    JsonOption,
    ServerOption,
    YesOption,
    _echo_json,
    _fail,
    _is_uuid,
    _path_id,
    _session,
    _table,
    _text,
    one_line_errors,
)

if TYPE_CHECKING:
    from visiona.client.http import ApiClient

webhooks_app = typer.Typer(
    rich_markup_mode=None,
    help="Signed webhooks: endpoints that receive your organisation's events.",
    no_args_is_help=True,
)

IdArgument = Annotated[
    str,
    typer.Argument(metavar="ID", help="The endpoint: its id, a unique id prefix or its URL."),
]
EventOption = Annotated[
    list[str] | None,
    typer.Option(
        "--event",
        "-e",
        metavar="TYPE",
        help="An event type: an action (device.renamed), a family (device.*) or * (repeat).",
    ),
]
DescriptionOption = Annotated[
    str | None, typer.Option("--description", help="What the endpoint is for.")
]
_STATES = ("pending", "delivered", "failed")


def _when(value: Any) -> str:
    return str(value or "")[:19].replace("T", " ")


def _webhook_id(api: ApiClient, ref: str) -> str:
    """The id of the one endpoint ``ref`` names (an id, a unique prefix, or its URL)."""
    if _is_uuid(ref):
        return _path_id(ref)
    items = list(api.pages("/webhooks", {"limit": "200"}))
    for matches in (
        [i for i in items if i["url"] == ref],
        [i for i in items if str(i["id"]).startswith(ref.lower())] if ref.strip() else [],
    ):
        if len(matches) == 1:
            return _path_id(str(matches[0]["id"]))
        if len(matches) > 1:
            raise _fail(f"ambiguous: {ref!r} matches {len(matches)} endpoints; give more of the id")
    raise _fail(f"no webhook endpoint with the id or URL {ref!r}")


def _state(item: dict[str, Any]) -> str:
    if item["enabled"]:
        return "failing" if item.get("failing_since") else "enabled"
    return f"disabled ({item.get('disabled_reason') or 'no reason'})"


def _show(item: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        _echo_json(item)
        return
    table = _table("field", "value")
    for name in ("id", "url", "description", "events", "state", "failing_since", "created_at"):
        if name == "events":
            value = " ".join(item["events"])
        elif name == "state":
            value = _state(item)
        else:
            value = str(item.get(name) or "")
        table.add_row(name, value)
    typer.echo(_text(table), nl=False)


@webhooks_app.command("list")
@one_line_errors
def list_webhooks(as_json: JsonOption = False, server: ServerOption = None) -> None:
    """The organisation's webhook endpoints and their state (never their secrets)."""
    with _session(server) as api:
        items = list(api.pages("/webhooks", {"limit": "200"}))
    if as_json:
        for item in items:
            _echo_json(item)
        return
    table = _table("id", "url", "events", "state", "created")
    for item in items:
        table.add_row(
            str(item["id"]),
            item["url"],
            " ".join(item["events"]),
            _state(item),
            _when(item["created_at"]),
        )
    typer.echo(_text(table) + f"{len(items)} webhook endpoint(s)")


@webhooks_app.command("create")
@one_line_errors
def create_webhook(
    url: Annotated[str, typer.Argument(metavar="URL", help="Where to POST the events.")],
    event: EventOption = None,
    description: DescriptionOption = None,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Create an endpoint; prints its signing secret once (keep it to verify deliveries)."""
    if not event:
        raise _fail("give at least one --event (an action, a family like device.*, or *)")
    body: dict[str, Any] = {"url": url, "events": event}
    if description is not None:
        body["description"] = description
    with _session(server) as api:
        made = api.call("POST", "/webhooks", json=body)
    if as_json:
        _echo_json(made)
        return
    typer.echo(f"webhook endpoint {made['id']} {made['url']} ({' '.join(made['events'])})")
    typer.echo(f"secret: {made['secret']}")
    typer.echo(
        "warning: the secret is shown once; store it now to verify the webhook-signature "
        "header of each delivery",
        err=True,
    )


@webhooks_app.command("show")
@one_line_errors
def show_webhook(
    webhook: IdArgument, as_json: JsonOption = False, server: ServerOption = None
) -> None:
    """One endpoint and its state."""
    with _session(server) as api:
        item = api.call("GET", f"/webhooks/{_webhook_id(api, webhook)}")
    _show(item, as_json=as_json)


def _patch(webhook: str, body: dict[str, Any], *, as_json: bool, server: str | None) -> None:
    with _session(server) as api:
        item = api.call("PATCH", f"/webhooks/{_webhook_id(api, webhook)}", json=body)
    _show(item, as_json=as_json)


@webhooks_app.command("update")
@one_line_errors
def update_webhook(  # noqa: PLR0917 - one parameter per command-line option
    webhook: IdArgument,
    url: Annotated[str | None, typer.Option("--url", help="A new URL.")] = None,
    event: EventOption = None,
    description: DescriptionOption = None,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Change an endpoint's URL, events (--event replaces them all) or description."""
    body: dict[str, Any] = {}
    if url is not None:
        body["url"] = url
    if event:
        body["events"] = event
    if description is not None:
        body["description"] = description or None
    if not body:
        raise _fail("nothing to change: give --url, --event or --description")
    _patch(webhook, body, as_json=as_json, server=server)


@webhooks_app.command("enable")
@one_line_errors
def enable_webhook(
    webhook: IdArgument, as_json: JsonOption = False, server: ServerOption = None
) -> None:
    """Enable an endpoint again (after it was disabled, by you or for failing): what is
    queued for it is sent."""
    _patch(webhook, {"enabled": True}, as_json=as_json, server=server)


@webhooks_app.command("disable")
@one_line_errors
def disable_webhook(
    webhook: IdArgument, as_json: JsonOption = False, server: ServerOption = None
) -> None:
    """Stop sending to an endpoint; its queued deliveries wait until it is enabled."""
    _patch(webhook, {"enabled": False}, as_json=as_json, server=server)


@webhooks_app.command("delete")
@one_line_errors
def delete_webhook(
    webhook: IdArgument,
    yes: YesOption = False,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """Delete an endpoint and its delivery log (asks first)."""
    with _session(server) as api:
        webhook_id = _webhook_id(api, webhook)
        item = api.call("GET", f"/webhooks/{webhook_id}")
        if not yes and not typer.confirm(
            f"delete {item['url']} ({item['id']})? its queued deliveries are dropped"
        ):
            raise _fail("not deleted")
        api.call("DELETE", f"/webhooks/{webhook_id}")
    if as_json:
        _echo_json({"deleted": item["id"]})
        return
    typer.echo(f"deleted {item['id']}")


@webhooks_app.command("test")
@one_line_errors
def send_test_event(
    webhook: IdArgument, as_json: JsonOption = False, server: ServerOption = None
) -> None:
    """Queue a webhook.test event for this endpoint only; follow it with `deliveries`."""
    with _session(server) as api:
        queued = api.call("POST", f"/webhooks/{_webhook_id(api, webhook)}/test")
    if as_json:
        _echo_json(queued)
        return
    typer.echo(f"test event {queued['event_id']} queued (delivery {queued['delivery_id']})")


@webhooks_app.command("deliveries")
@one_line_errors
def list_deliveries(
    webhook: IdArgument,
    state: Annotated[
        str | None,
        typer.Option("--state", help="Only pending, delivered or failed deliveries."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=200, help="How many, newest first.")
    ] = 50,
    as_json: JsonOption = False,
    server: ServerOption = None,
) -> None:
    """An endpoint's delivery log, newest first: state, attempts, status, latency."""
    if state is not None and state not in _STATES:
        raise _fail(f"--state is one of {', '.join(_STATES)}")
    params = {"limit": str(limit)}
    if state is not None:
        params["state"] = state
    with _session(server) as api:
        path = f"/webhooks/{_webhook_id(api, webhook)}/deliveries"
        items = api.call("GET", path, params=params)["items"]
    if as_json:
        for item in items:
            _echo_json(item)
        return
    table = _table("id", "event", "state", "attempts", "status", "latency", "last attempt", "error")
    for item in items:
        latency = item.get("last_latency_ms")
        table.add_row(
            item["id"],
            item["event_type"],
            item["state"],
            str(item["attempts"]),
            str(item.get("last_status") or ""),
            "" if latency is None else f"{latency} ms",
            _when(item.get("last_attempt_at")),
            str(item.get("last_error") or "")[:60],
        )
    typer.echo(_text(table) + f"{len(items)} deliver{'y' if len(items) == 1 else 'ies'}")
