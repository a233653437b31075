"""The FastAPI application: `uvicorn api.main:app`."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.admission import Admission, request_slots
from api.docs import install_docs
from api.errors import install_error_handlers
from api.limits import BodyLimits
from api.observability import install_metrics
from api.routes import admin, chat, checkpoints, datasets, downloads, files, fine_tuning, graders, health, jobs, models
from api.services.modelops import ModelOps
from api.ui import router as ui_router
from core.db import configure_pool, release_engine
from core.queue import make_celery
from core.settings import Settings, get_settings
from trainers.spec.reward_functions import load_registry

_frozen = False


def freeze_startup_objects() -> None:
    """Keep what the process built before serving (modules, the app) out of the garbage collector's
    full passes, once per process: a full pass over them holds the GIL for tens of milliseconds,
    which every request in flight then waits out."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """On start, freeze the startup objects; on shutdown, end the model process (it would also die
    with this process) and close the database connections of the app's engine (a process that goes
    on, such as a server reloading its app, would otherwise keep them). The broker's connections are
    kombu's, pooled for the process by broker URL, and serve the next app of the same URL."""
    freeze_startup_objects()
    yield
    app.state.model_ops.close()
    release_engine(app.state.settings.database_url)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for `settings` (the environment's by default)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="rlhf-service",
        version="0.1.0",
        description="Self-hosted RLHF training: upload preference data, train reward models and "
                    "align language models with DPO, PPO or GRPO, stream metrics, download checkpoints.",
        lifespan=lifespan,
        docs_url=None,  # install_docs serves /docs and /redoc from shipped assets instead of a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    configure_pool(settings.database_url, settings.db_pool)
    app.state.celery = make_celery(settings)
    # Scoring and merging run in a child process, started on first use (never torch in this one).
    app.state.model_ops = ModelOps(cache_bytes=settings.model_ops_cache_bytes,
                                   idle_seconds=settings.model_ops_idle_seconds)
    # A configured module that cannot be imported stops the start: a server misconfiguration.
    app.state.reward_registry = load_registry(settings.reward_function_modules)
    install_error_handlers(app)
    install_docs(app)
    app.add_middleware(BodyLimits, settings=settings)
    app.add_middleware(Admission, slots=request_slots(settings), wait_seconds=settings.db_pool_timeout_seconds)
    install_metrics(app, settings)  # outermost: counts what the middleware above refuses, too
    # The OpenAI-compatible layer (files, fine_tuning, models, chat) is an adapter over the same services.
    for module in (datasets, jobs, checkpoints, downloads, graders, files, fine_tuning, models, chat, admin, health):
        app.include_router(module.router)
    app.include_router(ui_router)  # the dashboard at /ui, outside the OpenAPI schema
    return app


app = create_app()
