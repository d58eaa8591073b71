"""Pairing tokens and device session tokens: issue, list, revoke, exchange, check."""
