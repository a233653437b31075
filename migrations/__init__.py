"""Alembic revisions of the rlhf-service schema."""
