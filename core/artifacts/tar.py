"""Download archives of stored checkpoints.

Archives are plain tar streams generated on the fly with fixed metadata (sorted names, mtime 0,
uid/gid 0), so the bytes - and therefore the sha256 recorded at save time - are the same on every
download and from every backend, without storing a second copy of the weights.
"""

import hashlib
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

CHUNK = 1 << 20
BLOCK = tarfile.BLOCKSIZE  # 512

# One file of an archive: its name relative to the archived directory, its size, and a reader of its bytes.
Member = tuple[str, int, Callable[[], Iterator[bytes]]]


def member_order(rel: str) -> list[str]:
    """Sort key of a member: component by component, the order of the local directory's sorted paths."""
    return rel.split("/")


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT)


def tar_stream(members: Iterable[Member], root_name: str) -> Iterator[bytes]:
    """Yield a tar archive of `members` (in the order given) under the directory `root_name`."""
    for rel, size, read in members:
        yield _header(f"{root_name}/{rel}", size)
        written = 0
        for chunk in read():
            written += len(chunk)
            yield chunk
        if written != size:
            raise OSError(f"{rel} changed size while it was archived ({size} -> {written} bytes)")
        if size % BLOCK:
            yield b"\0" * (BLOCK - size % BLOCK)
    yield b"\0" * (2 * BLOCK)


def read_file(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def directory_files(directory: Path) -> list[tuple[str, Path]]:
    """The regular files under `directory` (symlinks left out), as (relative name, path), in archive order."""
    files = [p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()]
    members = [(p.relative_to(directory).as_posix(), p) for p in files]
    return sorted(members, key=lambda m: member_order(m[0]))


def iter_tar(directory: Path, root_name: str) -> Iterator[bytes]:
    """Yield a deterministic tar archive of the regular files under `directory`, in 1 MiB chunks.

    Symlinks are left out, so an archive only ever holds the checkpoint's own files.
    """
    members = [(rel, path.stat().st_size, lambda path=path: read_file(path))
               for rel, path in directory_files(directory)]
    return tar_stream(members, root_name)


def tar_digest(directory: Path, root_name: str) -> tuple[int, str]:
    """Size in bytes and sha256 of `iter_tar(directory, root_name)`."""
    digest, size = hashlib.sha256(), 0
    for chunk in iter_tar(directory, root_name):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()
