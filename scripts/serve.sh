#!/usr/bin/env bash
# Run the service on embedded defaults (SQLite, a serverless broker, artifacts under ./var):
# set-up, migrations, the API on http://127.0.0.1:8000 (Swagger UI at /docs) and one worker.
# DATABASE_URL / CELERY_BROKER_URL in the environment (or .env) switch to Postgres and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/rlhf-service serve "$@"
