"""The service as real processes: `rlhf-service api` and `rlhf-service worker` on each deployment."""

import pytest

from e2e_support import deployment
from support import BACKENDS


@pytest.fixture(scope="module", params=BACKENDS)
def service(request, tmp_path_factory):
    """Run `rlhf-service api` and `rlhf-service worker` on one deployment; yield an HTTP client."""
    with deployment(request, tmp_path_factory.mktemp(request.param)) as dep:
        yield dep.client
