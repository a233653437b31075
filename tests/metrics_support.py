"""Reading /metrics in tests: the samples of a scrape, looked up by name and labels."""

from prometheus_client.parser import text_string_to_metric_families

# The sample names each metric type exposes besides the family's own name.
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",), "untyped": ("",)}


class Scrape:
    """The samples of one /metrics body: `scrape["rlhf_jobs", {"status": "queued", ...}]` is a value (0 if absent)."""

    def __init__(self, text: str) -> None:
        self.families = list(text_string_to_metric_families(text))
        self.values: dict[tuple[str, frozenset], float] = {}
        for family in self.families:
            for sample in family.samples:
                self.values[sample.name, frozenset(sample.labels.items())] = sample.value

    def __getitem__(self, key: tuple[str, dict[str, str]]) -> float:
        name, labels = key
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def series(self, name: str) -> list[dict[str, str]]:
        """The label sets of every sample named `name`."""
        return [dict(labels) for sample_name, labels in self.values if sample_name == name]

    def names(self) -> set[str]:
        """Every sample name the scrape declares, including those of families with no samples yet."""
        names = {sample_name for sample_name, _ in self.values}
        for family in self.families:
            names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        return names


def scrape(client, **headers: str) -> Scrape:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return Scrape(r.text)
