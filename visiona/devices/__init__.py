"""Devices, pairing tokens, agent session tokens, the pair exchange and unpair."""
