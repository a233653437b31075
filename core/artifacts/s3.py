"""Checkpoint storage in an S3-compatible object store (AWS S3, MinIO, Ceph), through boto3.

A key is a "directory" of objects under `<prefix>/<key>/`. Writing one uploads a finished local
staging directory file by file (large files in parallel multipart parts); a checkpoint only becomes
visible to readers when its database row is written, which happens after `commit` returned, so a
half-uploaded checkpoint is never offered. Processes that need the files on disk (training resumes,
`checkpoint:<id>` base models, reward models) download a key once into a local cache directory,
published by an atomic rename and reused afterwards.
"""

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import suppress
from functools import lru_cache, partial
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from core.artifacts.tar import CHUNK, directory_files, member_order, tar_stream

DELETE_BATCH = 1000  # most keys one DeleteObjects request takes


def parse_s3_url(url: str) -> tuple[str, str]:
    """Bucket and key prefix (no slashes at either end) of `s3://bucket/prefix`."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
    return parts.netloc, parts.path.strip("/")


@lru_cache
def s3_client(endpoint_url: str | None, region: str | None, access_key_id: str | None,
              secret_access_key: str | None):
    """A (thread-safe) S3 client; credentials left None come from the standard AWS chain."""
    config = Config(retries={"mode": "standard", "max_attempts": 5},
                    # MinIO and Ceph are addressed by path; AWS by virtual host.
                    s3={"addressing_style": "path" if endpoint_url else "auto"})
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url, region_name=region, aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key, config=config)


def checked_rel(rel: str) -> str:
    """`rel` if it is a plain relative key (no leading slash, no '..', nothing empty)."""
    pure = PurePosixPath(rel)
    if not rel or rel.startswith("/") or ".." in pure.parts or str(pure) != rel.rstrip("/"):
        raise ValueError(f"not a valid artifact key: {rel!r}")
    return rel


class S3ArtifactStore:
    """Keys are relative POSIX paths under `s3://bucket/prefix`; `work_dir` holds staging and the cache."""

    def __init__(self, *, bucket: str, prefix: str, client, work_dir: Path, part_size: int) -> None:
        self.bucket, self.prefix, self.client = bucket, prefix.strip("/"), client
        self.work_dir = Path(work_dir).resolve()
        self.transfer = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)

    def object_name(self, key: str) -> str:
        key = checked_rel(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def objects(self, key: str) -> list[tuple[str, int]]:
        """(name relative to `key`, size) of every object under `key`."""
        base = self.object_name(key) + "/"
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            for obj in page.get("Contents", []):
                rel = obj["Key"].removeprefix(base)
                if rel and not rel.endswith("/"):  # a folder placeholder some tools create holds no bytes
                    found.append((checked_rel(rel), obj["Size"]))
        return found

    def staging_dir(self) -> Path:
        """A fresh empty local directory, to be uploaded with `commit`."""
        path = self.work_dir / ".staging" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def commit(self, staging: Path, key: str) -> None:
        """Upload a finished staging directory to `key` (replacing an older one), then remove it.

        A failed upload removes what it wrote and raises: no partial key is left behind for a reader.
        """
        base = self.object_name(key)
        files = directory_files(staging)
        stale = {rel for rel, _ in self.objects(key)} - {rel for rel, _ in files}
        written: list[str] = []
        try:
            for rel, path in files:
                with path.open("rb") as f:  # a failed multipart upload is aborted by boto3 itself
                    self.client.upload_fileobj(f, self.bucket, f"{base}/{rel}", Config=self.transfer)
                written.append(f"{base}/{rel}")
        except BaseException:
            with suppress(BotoCoreError, ClientError):
                self.delete_names(written)
            raise
        self.delete_names([f"{base}/{rel}" for rel in sorted(stale)])
        shutil.rmtree(staging, ignore_errors=True)

    def delete_names(self, names: list[str]) -> None:
        for i in range(0, len(names), DELETE_BATCH):
            batch = [{"Key": name} for name in names[i:i + DELETE_BATCH]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def delete(self, key: str) -> None:
        base = self.object_name(key)
        self.delete_names([f"{base}/{rel}" for rel, _ in self.objects(key)])

    def exists(self, key: str) -> bool:
        reply = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.object_name(key) + "/", MaxKeys=1)
        return reply.get("KeyCount", 0) > 0

    def read(self, name: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def read_file(self, key: str, name: str) -> Iterator[bytes]:
        """The bytes of the object `name` of `key`: requested now (FileNotFoundError if absent), streamed later."""
        object_name = f"{self.object_name(key)}/{checked_rel(name)}"
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=object_name)["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"no artifact {name!r} at {self.url(key)}") from exc
            raise
        return _chunks(body)

    def tar(self, key: str, root_name: str) -> Iterator[bytes]:
        """The objects of `key` streamed as the same tar the local store makes of the same files."""
        base = self.object_name(key)
        listed = sorted(self.objects(key), key=lambda o: member_order(o[0]))  # listed now, streamed later
        return tar_stream([(rel, size, partial(self.read, f"{base}/{rel}")) for rel, size in listed], root_name)

    def local_dir(self, key: str) -> Path:
        """A local copy of `key`'s files: downloaded on first use, then reused (keys are never rewritten)."""
        cache = self.work_dir / "cache"
        dest = cache / quote(checked_rel(key), safe="")
        if dest.is_dir():
            return dest
        listed = self.objects(key)
        if not listed:
            raise FileNotFoundError(f"no artifacts at {self.url(key)}")
        tmp = cache / f".download-{uuid.uuid4().hex}"
        base = self.object_name(key)
        try:
            for rel, _ in listed:
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, f"{base}/{rel}", str(target), Config=self.transfer)
            try:
                os.replace(tmp, dest)
            except OSError:
                if not dest.is_dir():  # else another process published the same files first
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_name(key)}"


def _chunks(body) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()
