"""`rlhf-service` command: migrate the database, run the API, a worker, or both (`serve`).

The API and the worker are started as their own processes by module name, so this module (part of
`core`) never imports either of them.
"""

import argparse
import os
import signal
import subprocess
import sys
import time

from core.settings import get_settings


def migrate() -> None:
    from core.migrate import upgrade

    upgrade(get_settings().database_url)


def api_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port)]


def worker_command(concurrency: int, queues: str | None, hostname: str | None) -> list[str]:
    settings = get_settings()
    cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
           "--loglevel", "INFO", "--concurrency", str(concurrency),
           "--queues", queues or settings.training_queue]
    if hostname:
        cmd += ["--hostname", hostname]
    return cmd


def bootstrap_key() -> None:
    """First start of a fresh deployment: make a "default" project and print its key."""
    from core.db import session_scope
    from core.projects import bootstrap_local_key

    settings = get_settings()
    with session_scope(settings.database_url) as session:
        key = bootstrap_local_key(session)
    if key is None:
        return
    settings.local_key_file.parent.mkdir(parents=True, exist_ok=True)
    settings.local_key_file.write_text(key + "\n")
    settings.local_key_file.chmod(0o600)
    print(f"rlhf-service: created project 'default'; its API key (also in {settings.local_key_file}):\n"
          f"  {key}", flush=True)


def create_project_command(name: str) -> None:
    from core.db import session_scope
    from core.projects import create_key, create_project

    with session_scope(get_settings().database_url) as session:
        project = create_project(session, name)
        _, key = create_key(session, project.id)
    print(f"project {project.id} ({name})\nAPI key: {key}")


def serve(host: str, port: int) -> int:
    """Migrate, then run the API and one worker until either exits or we are told to stop."""
    migrate()
    bootstrap_key()
    procs = [subprocess.Popen(api_command(host, port)), subprocess.Popen(worker_command(1, None, None))]
    print(f"rlhf-service: API on http://{host}:{port} (Swagger UI at /docs), worker started", flush=True)

    def stop(*_args: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    finally:
        stop()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    return max(p.returncode or 0 for p in procs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-service", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply database migrations (alembic upgrade head)")
    for name in ("api", "serve"):
        p = sub.add_parser(name, help="run the HTTP API" if name == "api" else "migrate, run API + worker")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
    cp = sub.add_parser("create-project", help="create a project and print an API key for it")
    cp.add_argument("name")
    w = sub.add_parser("worker", help="run a Celery worker that trains jobs")
    w.add_argument("--concurrency", type=int, default=1)
    w.add_argument("--queues", default=None, help="comma-separated queues (default: the training queue)")
    w.add_argument("--hostname", default=None)
    args = parser.parse_args(argv)

    if args.command == "migrate":
        migrate()
        return 0
    if args.command == "create-project":
        create_project_command(args.name)
        return 0
    if args.command == "serve":
        return serve(args.host, args.port)
    cmd = (api_command(args.host, args.port) if args.command == "api"
           else worker_command(args.concurrency, args.queues, args.hostname))
    os.execv(cmd[0], cmd)
    return 0  # unreachable: execv replaces the process


if __name__ == "__main__":
    sys.exit(main())
