"""docker-compose.yml's `monitoring` profile agrees with the API and the files in deploy/.

No Docker engine runs in CI: the compose file, Prometheus' config and Grafana's provisioning are
checked as data, against each other and against the API's /metrics.
"""

import re
from pathlib import Path

import yaml

from api.observability import METRICS_PATH

ROOT = Path(__file__).resolve().parents[3]
TEXT = (ROOT / "docker-compose.yml").read_text()
RAW = yaml.safe_load(TEXT)
# As `docker compose` reads it with no variable set: ${NAME:-default} becomes its default.
SERVICES = yaml.safe_load(re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", TEXT))["services"]
MONITORING = ("prometheus", "grafana")


def mounts(service: str) -> dict[str, Path]:
    """Container path -> repository path of a service's bind mounts."""
    found = {}
    for volume in SERVICES[service]["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            found[target] = ROOT / source
    return found


def test_monitoring_is_an_optional_profile_with_pinned_images():
    for name, service in SERVICES.items():
        if name in MONITORING:
            assert service["profiles"] == ["monitoring"], name
            image, _, tag = service["image"].partition(":")
            assert tag and tag != "latest" and any(c.isdigit() for c in tag), service["image"]
            assert all(port.startswith("127.0.0.1:") for port in service["ports"]), name  # no auth on Prometheus
        else:
            assert "profiles" not in service, name  # a plain `docker compose up` is unchanged


def test_prometheus_scrapes_the_api_with_its_token():
    prometheus = SERVICES["prometheus"]
    files = mounts("prometheus")
    command = prometheus["command"][0]
    config_path = command.split("--config.file=")[1].split()[0]
    config = yaml.safe_load(files[config_path].read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == METRICS_PATH
    assert job["static_configs"] == [{"targets": ["api:8000"]}]
    assert "8000:8000" in SERVICES["api"]["ports"] and SERVICES["api"]["command"][-1] == "8000"
    assert float(config["global"]["scrape_timeout"].rstrip("s")) > 5  # the API's database read gives up at 5 s
    # The token file the scrape sends is the one the entrypoint writes from the same METRICS_TOKEN as the API's.
    assert f"> {job['authorization']['credentials_file']} &&" in command
    assert RAW["x-app-env"]["METRICS_TOKEN"] == RAW["services"]["prometheus"]["environment"]["METRICS_TOKEN"]
    assert '"$$METRICS_TOKEN"' in command  # compose's escape: the container's shell expands it
    assert "/prometheus" in {v.split(":")[1] for v in prometheus["volumes"]}


def test_grafana_provisions_the_datasource_and_the_dashboard():
    grafana = SERVICES["grafana"]
    files = mounts("grafana")
    provisioning = files["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in SERVICES["prometheus"]["ports"]
    (provider,) = yaml.safe_load((provisioning / "dashboards/rlhf.yml").read_text())["providers"]
    dashboards = files[provider["options"]["path"]]
    assert [p.name for p in dashboards.glob("*.json")] == ["rlhf.json"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / Path(home).relative_to(provider["options"]["path"])).is_file()
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert "healthcheck" in SERVICES["prometheus"]
