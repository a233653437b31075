"""Celery worker of rlhf-service: one task runs one job, in a child process."""
