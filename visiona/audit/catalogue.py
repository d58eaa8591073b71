"""Every audit action: its name, what its target is, and the fields of its ``detail``.

The catalogue is the contract: :func:`visiona.audit.service.record` refuses an action
that is not here, and docs/api-spec.md lists exactly these (a test keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Action:
    """One kind of event."""

    name: str
    target_type: str
    summary: str
    detail: tuple[str, ...] = ()


_ALL = (
    Action("user.registered", "user", "An account was created."),
    Action("user.signed_in", "user", "A user signed in (web session issued)."),
    Action(
        "user.sign_in_failed",
        "user",
        "A sign-in failed. Target and owner: the account the email names, if one does; "
        "otherwise no owner (visible to no user).",
        ("email",),
    ),
    Action("user.signed_out", "user", "A web session ended by signing out."),
    Action("org.created", "org", "An organisation was created.", ("name", "personal")),
    Action(
        "member.invited",
        "invitation",
        "A member invited an email to the organisation with a role.",
        ("email", "role"),
    ),
    Action("invitation.revoked", "invitation", "A pending invitation was revoked."),
    Action(
        "member.joined",
        "user",
        "A user accepted an invitation and joined the organisation.",
        ("invitation_id", "role", "email"),
    ),
    Action("member.role_changed", "user", "A member's role was changed.", ("email", "from", "to")),
    Action("member.removed", "user", "A member was removed.", ("email", "role")),
    Action("member.left", "user", "A member left the organisation.", ("email", "role")),
    Action(
        "api_key.created",
        "api_key",
        "An API key was created (never its plaintext).",
        ("name", "scopes", "expires_at"),
    ),
    Action("api_key.revoked", "api_key", "An API key was revoked.", ("name",)),
    Action(
        "pairing_token.created", "pairing_token", "A pairing token was issued.", ("expires_at",)
    ),
    Action("pairing_token.revoked", "pairing_token", "A pairing token was revoked."),
    Action("pairing_token.used", "pairing_token", "A device exchanged the pairing token."),
    Action("device.created", "device", "A device was registered.", ("via", "serial_number")),
    Action(
        "device.paired",
        "device",
        "An agent paired the device with a pairing token.",
        ("pairing_token_id", "serial_number"),
    ),
    Action(
        "device.enrolled",
        "device",
        "An agent enrolled the device with an enrollment key (the keys of the tags it "
        "applied, the key's use number).",
        ("enrollment_key_id", "serial_number", "tag_keys", "use"),
    ),
    Action(
        "enrollment_key.created",
        "enrollment_key",
        "An enrollment key was issued.",
        ("name", "max_uses", "expires_at", "tag_keys"),
    ),
    Action("enrollment_key.revoked", "enrollment_key", "An enrollment key was revoked."),
    Action(
        "rollout.created",
        "rollout",
        "A rollout was created (a rollback names the rollout it reverses).",
        ("model_id", "selector", "devices", "canary", "batch", "rollback_of"),
    ),
    Action(
        "rollout.batch_started",
        "rollout",
        "A batch of a rollout started (batch 0 is the canary).",
        ("batch", "devices"),
    ),
    Action(
        "rollout.batch_finished",
        "rollout",
        "Every device of a batch reached an end state (waiting devices aside).",
        ("batch", "succeeded", "failed", "skipped"),
    ),
    Action(
        "rollout.paused",
        "rollout",
        "A rollout was paused (by a user or by its failures).",
        ("reason",),
    ),
    Action("rollout.resumed", "rollout", "A paused rollout was resumed."),
    Action("rollout.cancelled", "rollout", "A rollout was cancelled.", ("reason",)),
    Action(
        "rollout.completed",
        "rollout",
        "A rollout ended: every device reached an end state.",
        ("succeeded", "failed", "skipped", "cancelled"),
    ),
    Action(
        "rollout.failed",
        "rollout",
        "A rollout ended at its deadline with devices left.",
        ("reason",),
    ),
    Action("device.renamed", "device", "A device was renamed.", ("from", "to")),
    Action(
        "device.tagged",
        "device",
        "A device's tags changed (the tags added or changed, and the keys removed).",
        ("set", "removed"),
    ),
    Action(
        "device.unpaired",
        "device",
        "A device was unpaired; its tokens were revoked.",
        ("revoked_pairing_tokens", "revoked_session_tokens"),
    ),
    Action(
        "session_token.issued",
        "session_token",
        "A session token was issued to the device at pairing.",
        ("pairing_token_id",),
    ),
    Action(
        "session_token.renewed",
        "session_token",
        "The agent renewed its session token (the target is the new one).",
        ("previous_id",),
    ),
    Action("session_token.revoked", "session_token", "A session token was revoked."),
    Action(
        "tunnel.connected", "device", "The agent's tunnel connected.", ("session_token_id", "node")
    ),
    Action("tunnel.disconnected", "device", "The agent's tunnel closed.", ("reason",)),
    Action("tunnel.superseded", "device", "A new tunnel of the device replaced this one."),
    Action(
        "tunnel.conflict",
        "device",
        "Two agents connected as this device keep replacing each other's tunnel (one event "
        "per episode, instead of one per flap).",
        ("reason", "fix"),
    ),
    Action(
        "tunnel.closed_revoked",
        "device",
        "The tunnel was closed because its session token or device was revoked.",
    ),
    Action(
        "model.uploaded", "model", "A model was uploaded.", ("name", "target_chip", "file_size")
    ),
    Action("model.file_replaced", "model", "A model's file was replaced.", ("file_size",)),
    Action("model.renamed", "model", "A model was renamed.", ("from", "to")),
    Action("model.deleted", "model", "A model was deleted.", ("name",)),
    Action("deployment.requested", "deployment", "A deployment was requested.", ("model_id",)),
    Action(
        "deployment.succeeded",
        "deployment",
        "A deployment finished; or a transfer failed as lost with its node was found "
        "delivered (its agent reported running the model; `detail` says so).",
        ("model_id", "detail"),
    ),
    Action(
        "deployment.stored",
        "deployment",
        "A model was stored on the PC; no deploy hook is configured there.",
        ("model_id", "detail"),
    ),
    Action("deployment.failed", "deployment", "A deployment failed.", ("model_id", "reason")),
    Action(
        "proxy.forbidden_by_agent",
        "device",
        "The agent's own policy refused a proxied request (403 forbidden_by_agent).",
        ("method", "path"),
    ),
    Action(
        "forward.opened",
        "device",
        "A TCP forward to a port of the device's PC opened (the agent accepted it).",
        ("port", "forward_id"),
    ),
    Action(
        "forward.closed",
        "device",
        "A TCP forward ended: bytes each way, how long it lasted and why it ended.",
        (
            "port",
            "forward_id",
            "reason",
            "close_code",
            "bytes_to_device",
            "bytes_from_device",
            "duration_seconds",
        ),
    ),
    Action(
        "forward.refused",
        "device",
        "A TCP forward was refused: the port is not one the device's agent allows.",
        ("port", "reason"),
    ),
    Action(
        "webhook.created",
        "webhook",
        "A webhook endpoint was created (never its secret).",
        ("url", "events"),
    ),
    Action(
        "webhook.updated",
        "webhook",
        "A webhook endpoint's URL, events, description or state was changed.",
        ("fields",),
    ),
    Action("webhook.deleted", "webhook", "A webhook endpoint was deleted.", ("url",)),
    Action(
        "webhook.disabled",
        "webhook",
        "The server disabled a webhook endpoint that kept failing (every attempt of a "
        "delivery's retry schedule failed).",
        ("reason", "failing_since"),
    ),
    Action("webhook.enabled", "webhook", "A webhook endpoint was enabled again."),
)

#: Every action by name.
ACTIONS: dict[str, Action] = {action.name: action for action in _ALL}
#: Every target type.
TARGET_TYPES: frozenset[str] = frozenset(action.target_type for action in _ALL)
