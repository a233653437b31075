"""One file of a stored key reads back byte for byte on both backends; an absent one is FileNotFoundError."""

import pytest

from core.artifacts import ArtifactStore, open_store
from core.settings import Settings


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return ArtifactStore(tmp_path / "artifacts")
    return open_store(Settings(artifacts_dir=tmp_path / "work", **request.getfixturevalue("s3_overrides")))


def test_read_file_streams_the_stored_bytes(store):
    data = bytes(range(256)) * 9000  # over one chunk
    staging = store.staging_dir()
    (staging / "upload").write_bytes(data)
    (staging / "other").write_bytes(b"x")
    store.commit(staging, "files/file-1")
    assert b"".join(store.read_file("files/file-1", "upload")) == data
    assert b"".join(store.read_file("files/file-1", "other")) == b"x"


def test_an_absent_file_is_file_not_found_when_opened(store):
    with pytest.raises(FileNotFoundError):
        store.read_file("files/none", "upload")
    staging = store.staging_dir()
    (staging / "upload").write_bytes(b"x")
    store.commit(staging, "files/file-2")
    store.delete("files/file-2")
    with pytest.raises(FileNotFoundError):
        store.read_file("files/file-2", "upload")


def test_local_names_stay_inside_their_key(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts")
    staging = store.staging_dir()
    (staging / "upload").write_bytes(b"x")
    store.commit(staging, "files/file-3")
    with pytest.raises(ValueError):
        store.read_file("files/file-3", "../file-3/../../secret")
