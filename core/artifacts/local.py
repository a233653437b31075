"""Checkpoint storage on a local (or mounted) filesystem."""

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from core.artifacts.tar import CHUNK, iter_tar


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

    def exists(self, key: str) -> bool:
        return self.path(key).is_dir()

    def tar(self, key: str, root_name: str) -> Iterator[bytes]:
        """The files of `key` as a deterministic tar stream (see `core.artifacts.tar`)."""
        return iter_tar(self.path(key), root_name)

    def local_dir(self, key: str) -> Path:
        """A local directory holding the files of `key`: here, the key's own directory."""
        return self.path(key)

    def read_file(self, key: str, name: str) -> Iterator[bytes]:
        """The bytes of the file `name` of `key`, opened now and read in chunks."""
        path = (self.path(key) / name).resolve()
        if not path.is_relative_to(self.path(key)):
            raise ValueError(f"artifact file name escapes its key: {name!r}")
        return _chunks(path.open("rb"))

    def url(self, key: str) -> str:
        """Where `key` lives, for messages and references."""
        return str(self.path(key))


def _chunks(file) -> Iterator[bytes]:
    with file:
        while chunk := file.read(CHUNK):
            yield chunk
