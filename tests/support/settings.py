"""Settings for tests: the developer's environment and .env file ignored."""

from __future__ import annotations

from typing import Any

from visiona.kit.settings import Settings

#: asgi-lifespan waits 5 s by default; the lifespan connects to PostgreSQL and Redis, and
#: under a full run on this shared 2-core machine that has taken longer (not a timing test).
LIFESPAN_TIMEOUT = 60.0


def make_settings(**overrides: object) -> Settings:
    """Settings that ignore the developer's environment and .env file."""
    base: dict[str, Any] = {
        "login_rate_limit_per_address": 100_000,
        "login_rate_limit": 1_000,
        "pair_rate_limit": 1_000_000,
        "log_level": "WARNING",
        # no webhook dispatcher unless a test asks for it (tests/webhooks): the outbox
        # tests read the rows it would otherwise start delivering
        "webhook_dispatcher": False,
    }
    base.update(overrides)
    return Settings(_env_file=None, **base)
