"""Alembic migrations shipped inside the package (run by `visiona migrate`)."""
