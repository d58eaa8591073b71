"""Device tags: the rules of a ``key=value`` tag, the built-in tags, and their errors.

A tag is a ``key=value`` pair a user sets on a device (``PUT``/``PATCH
/devices/{id}/tags``, ``visiona devices tag``); selectors (:mod:`visiona.devices.selectors`)
filter devices by them. The character set follows Kubernetes labels:

- key: 1 to :data:`MAX_KEY_LENGTH` characters of ``a-z 0-9 . _ / -``, beginning and
  ending with a letter or digit (lower case only: ``Site`` and ``site`` are not two tags);
- value: 1 to :data:`MAX_VALUE_LENGTH` characters of ``A-Z a-z 0-9 . _ -``, beginning
  and ending with a letter or digit;
- at most :data:`MAX_TAGS` tags a user set per device (built-ins do not count).

Built-in tags are computed from the device record on every read and never stored:
``chip`` (the device type, trimmed and lower-cased: what a model's ``target_chip`` must
equal) and ``type`` (the device type as the agent reported it, trimmed). Neither is
present when the device type is unknown. They appear in every device answer's ``tags``
next to the user's tags and are read-only: setting one to another value than it has,
removing one, or any key under :data:`RESERVED_PREFIX`, is a 400 ``reserved_tag`` (one
sent with the value it has is ignored, so a device's ``tags`` can be sent back as read).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from visiona.kit.errors import AppError, BadRequestError

MAX_TAGS = 32
MAX_KEY_LENGTH = 63
MAX_VALUE_LENGTH = 63
#: The built-in tags' keys (computed from the device type; read-only).
BUILTIN_KEYS = ("chip", "type")
#: Keys under this prefix are kept for future built-in tags (read-only).
RESERVED_PREFIX = "visiona.io/"

KEY_PATTERN = r"[a-z0-9]([a-z0-9._/-]*[a-z0-9])?"
VALUE_PATTERN = r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?"
_KEY = re.compile(KEY_PATTERN)
_VALUE = re.compile(VALUE_PATTERN)


class InvalidTagError(AppError):
    """A tag key or value outside the documented character set or length."""

    status_code = 422
    code = "invalid_tag"
    default_message = "A tag key or value is not valid."


class TooManyTagsError(AppError):
    """The change would leave the device with more than :data:`MAX_TAGS` tags."""

    status_code = 422
    code = "too_many_tags"
    default_message = f"A device carries at most {MAX_TAGS} tags."


class ReservedTagError(BadRequestError):
    """A built-in (read-only) tag key was set or removed."""

    code = "reserved_tag"
    default_message = "Built-in tags are read-only."

    def __init__(self, key: str) -> None:
        """Refuse the built-in or reserved ``key``."""
        super().__init__(
            f"Tag {key!r} is built in (computed from the device) and cannot be set or removed."
        )
        self.key = key

    def body(self) -> dict[str, Any]:
        """The error body, with the refused key under ``key``."""
        body = super().body()
        body["error"]["key"] = self.key
        return body


def key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid tag key (None when it is)."""
    if not key:
        return "a tag key must not be empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"a tag key has at most {MAX_KEY_LENGTH} characters"
    if not _KEY.fullmatch(key):
        return (
            "a tag key is made of a-z, 0-9, '.', '_', '/' and '-', "
            "beginning and ending with a letter or digit"
        )
    return None


def value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid tag value (None when it is)."""
    if not value:
        return "a tag value must not be empty"
    if len(value) > MAX_VALUE_LENGTH:
        return f"a tag value has at most {MAX_VALUE_LENGTH} characters"
    if not _VALUE.fullmatch(value):
        return (
            "a tag value is made of A-Z, a-z, 0-9, '.', '_' and '-', "
            "beginning and ending with a letter or digit"
        )
    return None


def is_reserved(key: str) -> bool:
    """Whether ``key`` is a built-in tag (or under the reserved prefix): read-only."""
    return key in BUILTIN_KEYS or key.startswith(RESERVED_PREFIX)


def check_key(key: str) -> None:
    """422 ``invalid_tag`` unless ``key`` is a valid key; 400 ``reserved_tag`` if built in."""
    problem = key_problem(key)
    if problem is not None:
        raise InvalidTagError(f"Tag key {key[:80]!r}: {problem}.")
    if is_reserved(key):
        raise ReservedTagError(key)


def check_tags(tags: Mapping[str, str], builtins: Mapping[str, str]) -> dict[str, str]:
    """The tags a user sets, checked (422 ``invalid_tag``, 400 ``reserved_tag``).

    A built-in tag given with the value it has (``builtins``: the device's) is left out
    silently, so a device's ``tags`` as read can be sent back unchanged; with another
    value, or any key under :data:`RESERVED_PREFIX`, it is a 400 ``reserved_tag``.
    """
    kept: dict[str, str] = {}
    for key, value in tags.items():
        if key in builtins and builtins[key] == value:
            continue
        check_key(key)
        problem = value_problem(value)
        if problem is not None:
            raise InvalidTagError(f"Tag {key!r} has the value {value[:80]!r}: {problem}.")
        kept[key] = value
    return kept


def check_count(tags: Mapping[str, str]) -> None:
    """422 ``too_many_tags`` when ``tags`` (a user's, built-ins aside) are over the bound."""
    if len(tags) > MAX_TAGS:
        raise TooManyTagsError(
            f"A device carries at most {MAX_TAGS} tags; this change would leave {len(tags)}."
        )


def builtin_tags(device_type: str | None) -> dict[str, str]:
    """The built-in tags of a device of ``device_type`` (none when the type is unknown)."""
    kind = (device_type or "").strip()
    if not kind:
        return {}
    return {"chip": kind.lower(), "type": kind}


def visible_tags(device_type: str | None, user_tags: Mapping[str, str]) -> dict[str, str]:
    """What a device answer shows: the user's tags and the built-ins, sorted by key."""
    merged = {**user_tags, **builtin_tags(device_type)}
    return dict(sorted(merged.items()))


def parse_assignments(words: Iterable[str]) -> dict[str, str]:
    """``["site=lab", "room=2"]`` → ``{"site": "lab", "room": "2"}`` (``ValueError`` on a
    word without ``=``): the CLI's ``key=value`` arguments."""
    found: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {word!r}")
        found[key.strip()] = value.strip()
    return found
