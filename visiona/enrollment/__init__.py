"""Enrollment keys: reusable, revocable keys that pair many PCs without a token each."""
