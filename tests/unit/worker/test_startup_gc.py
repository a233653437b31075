"""A started API process keeps its startup objects out of the garbage collector's full passes."""

import subprocess
import sys


def test_serving_freezes_the_objects_built_at_startup(tmp_path):
    # Its own process: freezing is process-wide, and this one's objects must not be frozen for good.
    code = ("import gc\nfrom fastapi.testclient import TestClient\nfrom api.main import create_app\n"
            "assert gc.get_freeze_count() == 0\n"
            "with TestClient(create_app()) as client:\n"
            "    assert client.get('/healthz').status_code == 200\n"
            "    print(gc.get_freeze_count())\n")
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite", "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path}/b.db",
           "ARTIFACTS_DIR": str(tmp_path / "artifacts"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) > 50_000
