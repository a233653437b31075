"""docker-compose.yml agrees with the code: settings it sets exist, commands exist, order is safe.

No Docker engine runs in CI, so the file is checked as data.
"""

import re
from pathlib import Path

import pytest
import yaml

from core.cli import main as cli_main
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
TEXT = (ROOT / "docker-compose.yml").read_text()
# As `docker compose` reads it with no variable set: ${NAME:-default} becomes its default.
COMPOSE = yaml.safe_load(re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", TEXT))
RAW = yaml.safe_load(TEXT)
SERVICES = COMPOSE["services"]
APP_SERVICES = ["migrate", "api", "worker"]


def test_services_present():
    assert set(SERVICES) == {"postgres", "redis", "minio", "minio-init", "migrate", "api", "worker",
                             "prometheus", "grafana"}  # the last two only with `--profile monitoring`


@pytest.mark.parametrize("name", APP_SERVICES)
def test_environment_names_real_settings(name):
    env = SERVICES[name]["environment"]
    fields = {f.upper() for f in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    settings = Settings(**{k.lower(): v for k, v in env.items()})
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.celery_broker_url.startswith("redis://redis:")
    pg = SERVICES["postgres"]["environment"]
    assert f"{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}" in settings.database_url


@pytest.mark.parametrize("name", APP_SERVICES)
def test_commands_parse_with_the_real_cli(name, monkeypatch):
    command = SERVICES[name]["command"]
    assert command[0] == "rlhf-service"
    seen = {}
    monkeypatch.setattr("core.cli.migrate", lambda: seen.setdefault("migrate", True))
    monkeypatch.setattr("core.cli.os.execv", lambda path, argv: seen.setdefault("exec", argv))
    assert cli_main(command[1:]) == 0
    if name == "migrate":
        assert seen == {"migrate": True}
    elif name == "api":
        assert seen["exec"][-4:] == ["--host", "0.0.0.0", "--port", "8000"]
    else:
        assert seen["exec"][seen["exec"].index("--queues") + 1] == SERVICES[name]["environment"]["TRAINING_QUEUE"]


def test_start_order_and_health():
    for name in ("postgres", "redis", "api", "worker"):
        assert "healthcheck" in SERVICES[name], name
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        deps = SERVICES[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    assert "8000:8000" in SERVICES["api"]["ports"]


def test_worker_reserves_a_gpu_and_shares_artifacts_with_the_api():
    devices = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    artifacts = SERVICES["api"]["environment"]["ARTIFACTS_DIR"]
    for name in ("api", "worker"):
        assert any(v.endswith(f":{artifacts}") for v in SERVICES[name]["volumes"]), name


def test_the_worker_reserves_as_many_gpus_as_jobs_may_ask_processes():
    # one variable sets both, so the API never accepts a job the worker's GPUs cannot run
    reserved = RAW["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["count"]
    for name in ("api", "worker"):
        assert RAW["services"][name]["environment"]["WORKER_DEVICES"] == reserved == "${GPUS_PER_WORKER:-1}"
    assert Settings(**{k.lower(): v for k, v in SERVICES["api"]["environment"].items()}).worker_devices == 1


def test_api_and_worker_keep_checkpoints_in_the_minio_bucket():
    minio = SERVICES["minio"]["environment"]
    init = SERVICES["minio-init"]
    assert init["environment"] == minio
    assert init["depends_on"]["minio"]["condition"] == "service_healthy" and "healthcheck" in SERVICES["minio"]
    for name in ("api", "worker"):
        env = SERVICES[name]["environment"]
        settings = Settings(**{k.lower(): v for k, v in env.items()})
        bucket = settings.artifacts_url.removeprefix("s3://").split("/")[0]
        assert f"mc mb --ignore-existing store/{bucket}" in init["entrypoint"][-1]
        assert settings.artifacts_s3_endpoint_url == "http://minio:9000"
        assert settings.artifacts_s3_access_key_id == minio["MINIO_ROOT_USER"]
        assert settings.artifacts_s3_secret_access_key.get_secret_value() == minio["MINIO_ROOT_PASSWORD"]
        assert SERVICES[name]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_image_is_built_from_the_repository_dockerfile():
    for name in APP_SERVICES:
        assert SERVICES[name]["build"] == "." and SERVICES[name]["image"] == "rlhf-service:latest"
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("api", "core", "trainers", "worker", "migrations"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert 'pip install "torch==${TORCH_VERSION}"' in dockerfile
    assert dockerfile.index("torch==") < dockerfile.index("pip install .")
