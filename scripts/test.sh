#!/usr/bin/env bash
# Run the whole test suite: set-up, make sure the local PostgreSQL and Redis servers are up, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test,bench  # bench: TRL, the reference the parity tests (tests/unit/bench/) compare against

pg_host=127.0.0.1 pg_port=5432 redis_port=6379
if command -v pg_isready >/dev/null && ! pg_isready -q -h "$pg_host" -p "$pg_port"; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 30); do pg_isready -q -h "$pg_host" -p "$pg_port" && break; sleep 1; done
fi
if command -v redis-server >/dev/null && ! redis-cli -h 127.0.0.1 -p "$redis_port" ping >/dev/null 2>&1; then
  echo "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$redis_port" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 30); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 1; done
fi

.venv/bin/ruff check .
# One pytest-xdist worker per core (at most 4): most tests wait on processes, servers and the database,
# so two workers keep both cores of a small machine busy. A module's tests stay on one worker
# (--dist loadscope), so a module-scoped deployment starts once. `-n 0` (after this) runs in one process.
workers=$(nproc 2>/dev/null || echo 1); [ "$workers" -gt 4 ] && workers=4
# Idle OpenMP threads sleep rather than spin, as in the worker's training processes: the cores are shared.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec .venv/bin/python -m pytest -n "$workers" --dist loadscope "$@"
