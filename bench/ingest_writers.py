"""Dataset ingest on the embedded deployment (SQLite) while another process-like writer keeps working.

    .venv/bin/python bench/ingest_writers.py [--rows 300000] [--beat-seconds 0.05]

One thread stores a `--rows`-row preference JSONL file through the upload service
(`api.services.datasets.create`, as ``POST /v1/datasets`` does after the body is received); another
renews a job's heartbeat (one ``UPDATE jobs``, as a worker does) every `--beat-seconds` with its own
connection and the deployment's 30 s busy timeout. Printed: ingest rows/s, and the heartbeat
UPDATE's latency while the ingest ran (p50, max) — how long another writer waits for the upload.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from sqlalchemy import update  # noqa: E402

from api.services import datasets as service  # noqa: E402
from core.db import session_factory, session_scope  # noqa: E402
from core.models import Dataset, Job, utcnow  # noqa: E402
from tests.support import embedded_settings, jsonl, new_project_key, preference_rows, project_of  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000, help="rows of the ingested preference file")
    parser.add_argument("--beat-seconds", type=float, default=0.05, help="pause between heartbeat updates")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        settings = embedded_settings(Path(root))
        project_id = project_of(settings, new_project_key(settings))
        content = jsonl(preference_rows(args.rows))
        with session_scope(settings.database_url) as session:
            job = Job(type="dpo", base_model="builtin:tiny-llama", dataset_id="ds_x", hyperparameters={},
                      project_id=project_id)
            session.add(job)
        done, waits = threading.Event(), []

        def beat() -> None:
            while not done.is_set():
                start = time.perf_counter()
                with session_scope(settings.database_url) as session:
                    session.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=utcnow()))
                waits.append(time.perf_counter() - start)
                done.wait(args.beat_seconds)

        beater = threading.Thread(target=beat)
        beater.start()
        session = session_factory(settings.database_url)()
        start = time.perf_counter()
        try:
            dataset, _ = service.create(session=session, project_id=project_id, file=io.BytesIO(content),
                                        filename="bench.jsonl", name="bench", kind="preference",
                                        max_rows=10_000_000)
        finally:
            seconds = time.perf_counter() - start
            done.set()
            beater.join()
            session.close()
        with session_scope(settings.database_url) as check:
            assert check.get(Dataset, dataset.id).row_count == args.rows
        result = {"rows": args.rows, "ingest_seconds": round(seconds, 2),
                  "rows_per_s": round(args.rows / seconds), "heartbeats": len(waits),
                  "heartbeat_p50_ms": round(statistics.median(waits) * 1000, 1),
                  "heartbeat_max_ms": round(max(waits) * 1000, 1)}
        print(json.dumps(result))


if __name__ == "__main__":
    main()
