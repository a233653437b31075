"""The worker's Celery app: `celery -A worker.celery_app worker`."""

from celery.signals import worker_ready

from core.queue import make_celery
from core.settings import get_settings

app = make_celery(get_settings())
app.conf.include = ["worker.tasks"]


@worker_ready.connect
def _start_reaper(**_kwargs: object) -> None:
    # In the worker's main process only: it outlives the pool processes that run tasks.
    from worker.reaper import start_reaper

    start_reaper(get_settings(), app)
