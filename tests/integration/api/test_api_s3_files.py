"""/v1/files with the artifacts in S3-compatible object storage: the uploaded bytes go to the bucket, come
back byte for byte as the content, and leave with the file."""

import pytest

from api.services.files import original_key
from core.artifacts import S3ArtifactStore, open_store
from tests.support import embedded_settings, jsonl


@pytest.fixture
def settings(tmp_path, s3_overrides):
    """An embedded deployment whose ARTIFACTS_URL names a fresh bucket."""
    return embedded_settings(tmp_path, **s3_overrides)


def test_file_bytes_live_in_the_bucket(client, settings):
    store = open_store(settings)
    assert isinstance(store, S3ArtifactStore)
    content = jsonl([{"prompt": f"say {i}", "completion": f"{i}!"} for i in range(3)]) + b"\n"
    file = client.post("/v1/files", files={"file": ("t.jsonl", content)}, data={"purpose": "fine-tune"}).json()
    assert store.exists(original_key(file["id"]))
    r = client.get(f"/v1/files/{file['id']}/content")
    assert r.status_code == 200 and r.content == content
    assert client.delete(f"/v1/files/{file['id']}").json()["deleted"] is True
    assert not store.exists(original_key(file["id"]))
