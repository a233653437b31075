"""The worker's Celery app: `celery -A worker.celery_app worker`."""

from celery.signals import worker_process_init, worker_ready

from core.queue import make_celery
from core.settings import get_settings

app = make_celery(get_settings())
app.conf.include = ["worker.tasks"]


@worker_ready.connect
def _start_reaper(**_kwargs: object) -> None:
    # In the worker's main process only: it outlives the pool processes that run tasks.
    from worker.reaper import start_reaper

    start_reaper(get_settings(), app)


@worker_process_init.connect
def _start_launcher(**_kwargs: object) -> None:
    # In each pool process, which runs the tasks: its fork server imports the training stack now,
    # while the worker waits for a job, instead of every job's child importing it after the claim.
    from worker.launcher import start_server

    start_server()
