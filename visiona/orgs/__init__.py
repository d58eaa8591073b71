"""Organisations, members, roles and invitations (issue 22): who may act where."""
