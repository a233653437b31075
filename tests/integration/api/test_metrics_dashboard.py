"""The shipped Grafana dashboard asks only for metrics the API exposes: every metric name in every PromQL
expression of deploy/grafana/dashboards/rlhf.json is compared with the names of a real scrape of the app,
so renaming a metric without the dashboard (or the reverse) fails here."""

import json
import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from api.main import create_app
from tests.metrics_support import scrape
from tests.support import embedded_settings

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = json.loads((ROOT / "deploy/grafana/dashboards/rlhf.json").read_text())
DATASOURCES = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
# Series Prometheus makes itself for each target rather than reads from it.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, aggregation
    keywords, label names or values, range durations, or Grafana variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges, $__rate_interval
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        name, call = match.groups()
        if not call and name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


def panel_targets() -> list[tuple[str, dict]]:
    return [(panel["title"], target) for panel in DASHBOARD["panels"] for target in panel.get("targets", [])]


def test_metric_names_are_read_from_promql():
    expr = ('histogram_quantile(0.95, sum by (route, le) (rate(rlhf_x_bucket{status=~"5..",a="b c"}'
            '[$__rate_interval]))) / on (job) group_left sum(up offset 5m) or vector(0)')
    assert metric_names(expr) == {"rlhf_x_bucket", "up"}


@pytest.fixture(scope="module")
def exposed(tmp_path_factory) -> set[str]:
    """Every name a real scrape of the app declares (families without samples yet included)."""
    with TestClient(create_app(embedded_settings(tmp_path_factory.mktemp("dash")))) as client:
        client.get("/healthz")
        return scrape(client).names()


def test_every_dashboard_expression_uses_exposed_metrics(exposed):
    targets = panel_targets()
    assert len(targets) >= 15
    used = set()
    for title, target in targets:
        names = metric_names(target["expr"])
        assert names, (title, target["expr"])  # every expression selects some metric
        missing = names - exposed - PROMETHEUS_SERIES
        assert not missing, f"panel {title!r} asks for {sorted(missing)}, which /metrics does not expose"
        used |= names
    # What the dashboard is for: requests, latency, jobs, the queue, pace, leases and storage.
    for name in ("rlhf_http_requests_total", "rlhf_http_request_duration_seconds_bucket", "rlhf_jobs",
                 "rlhf_queue_depth", "rlhf_queue_oldest_age_seconds", "rlhf_job_steps_per_second",
                 "rlhf_job_tokens_per_second", "rlhf_worker_heartbeat_age_seconds", "rlhf_checkpoint_bytes"):
        assert name in used, name


def test_panels_use_the_provisioned_datasource_and_do_not_overlap():
    (datasource,) = DATASOURCES["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    cells = set()
    for panel in DASHBOARD["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
            assert all(t["datasource"]["uid"] == datasource["uid"] for t in panel["targets"]), panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not area & cells, panel["title"]
        cells |= area
    assert len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])
