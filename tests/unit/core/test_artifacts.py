"""Artifact store confinement and deterministic, streamable checkpoint archives."""

import hashlib
import io
import os
import tarfile

import pytest

from core.artifacts import ArtifactStore, iter_tar, tar_digest


def make_tree(root):
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    return root


def test_archive_is_deterministic_and_extracts(tmp_path):
    tree = make_tree(tmp_path / "m")
    first = b"".join(iter_tar(tree, "ckpt_x"))
    os.utime(tree / "config.json", (1, 1))  # times do not enter the archive
    second = b"".join(iter_tar(tree, "ckpt_x"))
    assert first == second
    assert tar_digest(tree, "ckpt_x") == (len(first), hashlib.sha256(first).hexdigest())
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        assert tar.getnames() == ["ckpt_x/config.json", "ckpt_x/sub/weights.bin"]
        assert tar.extractfile("ckpt_x/sub/weights.bin").read() == (tree / "sub" / "weights.bin").read_bytes()


def test_archive_streams_in_bounded_chunks_and_skips_symlinks(tmp_path):
    tree = make_tree(tmp_path / "m")
    (tmp_path / "secret").write_text("not yours")
    (tree / "link").symlink_to(tmp_path / "secret")
    chunks = list(iter_tar(tree, "c"))
    assert max(len(c) for c in chunks) <= 1 << 20
    names = tarfile.open(fileobj=io.BytesIO(b"".join(chunks))).getnames()
    assert "c/link" not in names


def test_store_commit_and_confinement(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    staging = store.staging_dir()
    (staging / "f").write_text("v1")
    path = store.commit(staging, "jobs/j/checkpoint-1")
    assert (path / "f").read_text() == "v1" and not staging.exists()
    again = store.staging_dir()
    (again / "f").write_text("v2")
    assert (store.commit(again, "jobs/j/checkpoint-1") / "f").read_text() == "v2"
    with pytest.raises(ValueError):
        store.path("../outside")
    store.delete("jobs/j/checkpoint-1")
    assert not path.exists()
