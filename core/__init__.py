"""Shared persistence for the api and the worker: settings, ORM models, sessions, artifact storage."""
