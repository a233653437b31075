"""Where checkpoints are kept: a local directory (the default) or an S3-compatible object store.

Both backends answer the same `Store` interface; `open_store` picks one from the settings.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from core.artifacts.local import ArtifactStore
from core.artifacts.s3 import S3ArtifactStore, parse_s3_url, s3_client
from core.artifacts.tar import iter_tar, tar_digest
from core.settings import Settings

__all__ = ["ArtifactStore", "S3ArtifactStore", "Store", "iter_tar", "open_store", "tar_digest"]


class Store(Protocol):
    def staging_dir(self) -> Path:
        """A fresh empty local directory to write into, then `commit`."""

    def commit(self, staging: Path, key: str) -> object:
        """Store a finished staging directory as `key`, replacing an older one; the staging directory is gone."""

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def tar(self, key: str, root_name: str) -> Iterator[bytes]:
        """The files of `key` as a deterministic tar stream, the same bytes on every backend."""

    def local_dir(self, key: str) -> Path:
        """A local directory holding the files of `key`, for processes that load them from disk."""

    def read_file(self, key: str, name: str) -> Iterator[bytes]:
        """The bytes of one file of `key`, opened now (FileNotFoundError if absent) and streamed in chunks."""

    def url(self, key: str) -> str: ...


def open_store(settings: Settings) -> Store:
    """The store the settings name: ARTIFACTS_URL=s3://bucket/prefix, else the directory ARTIFACTS_DIR."""
    if not settings.artifacts_url:
        return ArtifactStore(settings.artifacts_dir)
    bucket, prefix = parse_s3_url(settings.artifacts_url)
    secret = settings.artifacts_s3_secret_access_key
    client = s3_client(settings.artifacts_s3_endpoint_url, settings.artifacts_s3_region,
                       settings.artifacts_s3_access_key_id, secret.get_secret_value() if secret else None)
    return S3ArtifactStore(bucket=bucket, prefix=prefix, client=client, work_dir=settings.artifacts_dir,
                           part_size=settings.artifacts_s3_part_size_bytes)
