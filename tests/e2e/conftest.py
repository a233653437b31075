"""The service as real processes: `rlhf-service api` and `rlhf-service worker` on each deployment."""

from pathlib import Path

import pytest

from tests.e2e.e2e_support import SHORT_LEASE, deployment
from tests.support import BACKENDS


@pytest.fixture(scope="module")
def embedded_service(request, tmp_path_factory):
    """The embedded deployment only, for flows whose deployment-specific paths other tests cover on both."""
    with deployment(request, tmp_path_factory.mktemp("embedded"), backend="embedded") as dep:
        yield dep.client


@pytest.fixture(scope="module", params=BACKENDS)
def service(request, tmp_path_factory):
    """Run `rlhf-service api` and `rlhf-service worker` on one deployment; yield an HTTP client."""
    with deployment(request, tmp_path_factory.mktemp(request.param)) as dep:
        yield dep.client


@pytest.fixture(params=BACKENDS)
def dep(request, tmp_path):
    """A fresh deployment on each backend with a short lease (fault tests); the test may stop its processes."""
    with deployment(request, tmp_path, **SHORT_LEASE) as dep:
        yield dep


def pytest_collection_modifyitems(config, items):
    """Every end-to-end test trains a model in its worker: all of them carry the `trains` marker."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.trains)
