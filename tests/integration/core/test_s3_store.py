"""The object-store backend against a real S3-protocol server: what it stores reads back as the same
archive the local backend makes, large files go up in parts, and a failed upload leaves nothing."""

import hashlib
import io
import os
import tarfile

import pytest

from core.artifacts import ArtifactStore, S3ArtifactStore, iter_tar, open_store, tar_digest
from core.settings import Settings

MiB = 1024 * 1024


@pytest.fixture
def store(s3_overrides, tmp_path) -> S3ArtifactStore:
    store = open_store(Settings(artifacts_dir=tmp_path / "work", **s3_overrides))
    assert isinstance(store, S3ArtifactStore)
    return store


def checkpoint_files(directory, weights: bytes = b"w" * 3000):
    """Names whose byte order differs from their path order ('a-b/x' < 'a/x' as text, not as paths)."""
    for rel, data in [("model/config.json", b'{"a": 1}'), ("model/a/x", b"x"), ("model/a-b/x", b"y" * 513),
                      ("model/weights.bin", weights), ("trainer_state.pt", b"state")]:
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(data)
    return directory


def listed(store: S3ArtifactStore) -> list[str]:
    reply = store.client.list_objects_v2(Bucket=store.bucket)
    return sorted(o["Key"] for o in reply.get("Contents", []))


def test_committed_key_streams_the_local_backends_tar_and_downloads(store, tmp_path):
    reference = checkpoint_files(tmp_path / "reference")
    staging = checkpoint_files(store.staging_dir())
    store.commit(staging, "jobs/j/attempt-1/checkpoint-1")
    assert not staging.exists() and store.exists("jobs/j/attempt-1/checkpoint-1")
    assert listed(store) == [f"checkpoints/jobs/j/attempt-1/checkpoint-1/{rel}" for rel in
                             ["model/a-b/x", "model/a/x", "model/config.json", "model/weights.bin",
                              "trainer_state.pt"]]

    archive = b"".join(store.tar("jobs/j/attempt-1/checkpoint-1/model", "ckpt_1"))
    assert archive == b"".join(iter_tar(reference / "model", "ckpt_1"))
    assert (len(archive), hashlib.sha256(archive).hexdigest()) == tar_digest(reference / "model", "ckpt_1")
    local = ArtifactStore(tmp_path / "local")
    local.commit(checkpoint_files(local.staging_dir()), "k")
    assert archive == b"".join(local.tar("k/model", "ckpt_1"))
    assert tarfile.open(fileobj=io.BytesIO(archive)).getnames() == [
        "ckpt_1/a/x", "ckpt_1/a-b/x", "ckpt_1/config.json", "ckpt_1/weights.bin"]

    copy = store.local_dir("jobs/j/attempt-1/checkpoint-1/model")
    assert copy.is_relative_to(tmp_path / "work" / "cache")
    assert (copy / "a-b" / "x").read_bytes() == b"y" * 513 and (copy / "weights.bin").read_bytes() == b"w" * 3000
    assert store.local_dir("jobs/j/attempt-1/checkpoint-1/model") == copy  # reused, not fetched again
    assert [p.name for p in (tmp_path / "work" / "cache").iterdir()] == [copy.name]  # no download left over


def test_commit_replaces_an_older_key_and_delete_removes_it(store):
    first = store.staging_dir()
    (first / "old.bin").write_bytes(b"old")
    (first / "kept.bin").write_bytes(b"v1")
    store.commit(first, "k")
    second = store.staging_dir()
    (second / "kept.bin").write_bytes(b"v2")
    store.commit(second, "k")
    assert listed(store) == ["checkpoints/k/kept.bin"]
    assert b"".join(store.read("checkpoints/k/kept.bin")) == b"v2"
    store.delete("k")
    assert listed(store) == [] and not store.exists("k")
    with pytest.raises(FileNotFoundError):
        store.local_dir("k")


def test_a_file_above_the_part_size_goes_up_in_parts(s3_overrides, tmp_path):
    store = open_store(Settings(artifacts_dir=tmp_path, artifacts_s3_part_size_bytes=5 * MiB, **s3_overrides))
    weights = os.urandom(11 * MiB)
    store.commit(checkpoint_files(store.staging_dir(), weights), "big")
    head = store.client.head_object(Bucket=store.bucket, Key="checkpoints/big/model/weights.bin")
    assert head["ETag"].strip('"').endswith("-3") and head["ContentLength"] == 11 * MiB  # 5 + 5 + 1 MiB
    archive = b"".join(store.tar("big/model", "c"))
    assert tarfile.open(fileobj=io.BytesIO(archive)).extractfile("c/weights.bin").read() == weights
    assert (store.local_dir("big/model") / "weights.bin").read_bytes() == weights


def unstorable_file(directory):
    """A file no object can be named after (its name is not UTF-8), sorted after a storable one."""
    (directory / "a.bin").write_bytes(b"stored first")
    (directory / os.fsdecode(b"z\xff.bin")).write_bytes(b"refused")
    return directory


def test_a_failed_upload_leaves_no_key(store):
    staging = unstorable_file(store.staging_dir())
    with pytest.raises(UnicodeEncodeError):
        store.commit(staging, "jobs/j/attempt-1/checkpoint-1")
    assert listed(store) == [] and not store.exists("jobs/j/attempt-1/checkpoint-1")
    assert (staging / "a.bin").exists()  # the caller's to remove


def test_keys_may_not_leave_the_prefix(store):
    for key in ["../other", "/abs", "a//b", "a/../b", ""]:
        with pytest.raises(ValueError):
            store.object_name(key)


def test_local_directory_stays_the_default(tmp_path):
    assert isinstance(open_store(Settings(artifacts_dir=tmp_path)), ArtifactStore)
    with pytest.raises(ValueError, match="ARTIFACTS_URL"):
        Settings(artifacts_url="https://bucket/x")
