"""Checkpoint storage on a local (or mounted) filesystem, and their download archives.

Archives are plain tar streams generated on the fly with fixed metadata (sorted names, mtime 0,
uid/gid 0), so the bytes - and therefore the sha256 recorded at save time - are the same on every
download, without storing a second copy of the weights.
"""

import hashlib
import os
import shutil
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 20
BLOCK = tarfile.BLOCKSIZE  # 512


class ArtifactStore:
    """Keys are relative POSIX paths under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        """The directory of `key`, refusing any key that would leave the root."""
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"artifact key escapes the store: {key!r}")
        return path

    def staging_dir(self) -> Path:
        """A fresh empty directory on the same filesystem, to be committed with `commit`."""
        path = self.root / ".staging" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def commit(self, staging: Path, key: str) -> Path:
        """Move a finished staging directory to `key` atomically, replacing an older one."""
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
        return dest

    def delete(self, key: str) -> None:
        shutil.rmtree(self.path(key), ignore_errors=True)


def _members(directory: Path) -> list[tuple[str, Path]]:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink())
    return [(p.relative_to(directory).as_posix(), p) for p in files]


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT)


def iter_tar(directory: Path, root_name: str) -> Iterator[bytes]:
    """Yield a deterministic tar archive of the regular files under `directory`, in 1 MiB chunks.

    Symlinks are left out, so an archive only ever holds the checkpoint's own files.
    """
    for rel, path in _members(directory):
        size = path.stat().st_size
        yield _header(f"{root_name}/{rel}", size)
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
        if size % BLOCK:
            yield b"\0" * (BLOCK - size % BLOCK)
    yield b"\0" * (2 * BLOCK)


def tar_digest(directory: Path, root_name: str) -> tuple[int, str]:
    """Size in bytes and sha256 of `iter_tar(directory, root_name)`."""
    digest, size = hashlib.sha256(), 0
    for chunk in iter_tar(directory, root_name):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()
