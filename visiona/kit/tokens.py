"""Opaque bearer tokens: ``<prefix>_`` + 32 random bytes (URL-safe), stored as sha256.

The plaintext is returned to its owner once and never stored or logged; lookups
go through :func:`hash_token`.
"""

from __future__ import annotations

import hashlib
import secrets

TOKEN_BYTES = 32
USER_SESSION_PREFIX = "vus"
PAIRING_PREFIX = "vpt"
DEVICE_SESSION_PREFIX = "vst"
#: An invitation to join an organisation (shown once to the admin who made it).
INVITATION_PREFIX = "vin"
#: An enrollment key (shown once to the admin who made it).
ENROLLMENT_PREFIX = "vek"
#: An organisation's API key for automation (shown once to the admin who made it).
API_KEY_PREFIX = "vak"


def new_token(prefix: str) -> str:
    """A new random token such as ``vus_…``."""
    return f"{prefix}_{secrets.token_urlsafe(TOKEN_BYTES)}"


def hash_token(token: str) -> str:
    """The hex sha256 of ``token``: what is stored and looked up."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def has_prefix(token: str, prefix: str) -> bool:
    """Whether ``token`` looks like one of ours with ``prefix`` (cheap pre-check)."""
    return token.startswith(f"{prefix}_") and 16 < len(token) < 128
