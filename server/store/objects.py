"""Object storage for artifacts: one interface, a local-directory and an fsspec implementation (ARCHITECTURE.md,
"Artifacts, queues and several machines").

Owns: `ObjectStore` (the interface), `LocalObjectStore` (a directory: temp file, fsync, `os.replace`),
`FsspecObjectStore` (any fsspec URL; `s3://bucket/prefix` through s3fs works with every S3-compatible store,
credentials and endpoint from the usual AWS variables that botocore reads: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION), `open_object_store(url)`,
`ObjectInfo`, the sha256-counting `HashingWriter` and `FileDigest`. Bytes only: no SQL, no FastAPI, no torch.

Keys are relative, '/'-separated names (`jobs/<id>/checkpoints/<name>.<sha>.pt`); a key with an empty part,
`.`/`..`, a backslash, a NUL or a leading '/' is refused (`ArtifactRejected`). Writes never expose a partial
object: bytes go under a temporary key `_tmp/<uuid>` and are committed to the final key only once complete
(a rename on a directory, copy-then-delete on an object store). Temporary keys that a crash left behind are
swept by the reaper (`worker/artifact_sweep.py`) once older than ORPHAN_GRACE_S.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from server.store.errors import ArtifactRejected

#: Where writes in progress live; everything below it is a candidate for the orphan sweep.
TEMP_PREFIX = "_tmp"
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FileDigest:
    size: int  # bytes
    sha256: str  # hex


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int  # bytes
    modified_at: datetime | None  # UTC; None when the backend does not say


class BinaryWriter(Protocol):
    """What a store's temporary object offers while it is written."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class HashingWriter:
    """A binary writer wrapper that counts bytes and updates a sha256 on every write."""

    def __init__(self, raw: BinaryWriter) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        self._raw.write(data)
        return len(data)

    def flush(self) -> None:
        self._raw.flush()

    def digest(self) -> FileDigest:
        return FileDigest(size=self.size, sha256=self._hash.hexdigest())


def check_key(key: str) -> str:
    """`key` if it is a safe relative object key, else ArtifactRejected."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ArtifactRejected(f"not an object key: {key!r}")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ArtifactRejected(f"not an object key: {key!r}")
    return key


def file_digest(path: Path) -> FileDigest:
    """Size (bytes) and sha256 of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return FileDigest(size=size, sha256=digest.hexdigest())


class ObjectStore(ABC):
    """Where artifact bytes live. Every method takes checked keys; missing objects raise FileNotFoundError."""

    #: the store's location as configured (a directory or a URL); for messages and the bench
    url: str

    # -- writes: temporary key, then commit --

    @abstractmethod
    def _open_temp(self, temp_key: str) -> BinaryWriter:
        """A binary file open for writing at `temp_key` (closed by the caller; closing completes it)."""

    @abstractmethod
    def _commit(self, temp_key: str, key: str) -> None:
        """Make the complete object at `temp_key` visible as `key` (replacing it), and drop `temp_key`."""

    @contextmanager
    def open_write(self, key: str) -> Iterator[HashingWriter]:
        """Write `key`: bytes go to a temporary key, committed to `key` only when the block ends without error.

        Readers never see a partial object; if the block (or the commit) raises, `key` is untouched and the
        temporary object is removed (or, if even that fails, left for the orphan sweep).
        After the block, `writer.digest()` gives the size and sha256 of what was written.
        """
        check_key(key)
        temp_key = f"{TEMP_PREFIX}/{uuid.uuid4().hex}"
        committed = False
        try:
            raw = self._open_temp(temp_key)
            try:
                writer = HashingWriter(raw)
                yield writer
            finally:
                raw.close()
            self._commit(temp_key, key)
            committed = True
        finally:
            if not committed:
                try:
                    self.delete(temp_key)
                except Exception:  # noqa: BLE001 - the store may be the thing that failed; the sweep removes it
                    pass

    def write(self, key: str, data: bytes | Iterable[bytes]) -> FileDigest:
        """Write `data` (bytes or chunks) to `key` through a temporary key; returns its size and sha256."""
        with self.open_write(key) as writer:
            for chunk in [data] if isinstance(data, bytes) else data:
                writer.write(chunk)
        return writer.digest()

    def put_file(self, path: Path, key: str) -> FileDigest:
        """Copy a local file to `key` through a temporary key; returns the size and sha256 of what was sent."""
        with path.open("rb") as f:
            return self.write(key, iter(lambda: f.read(CHUNK_BYTES), b""))

    # -- reads --

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and modification time of `key`, or None when there is no such object."""

    @abstractmethod
    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of `key` (fewer at its end). Raises FileNotFoundError."""

    def iter_range(self, key: str, start: int, end: int, *, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """Bytes [start, end) of `key` in chunks (for streaming responses)."""
        position = start
        while position < end:
            data = self.read_range(key, position, min(end, position + chunk_bytes))
            if not data:
                return
            position += len(data)
            yield data

    def get_file(self, key: str, dest: Path) -> FileDigest:
        """Download `key` to the local file `dest` (atomically: a temp file beside it, then rename)."""
        info = self.stat(key)
        if info is None:
            raise FileNotFoundError(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with tmp.open("wb") as f:
                writer = HashingWriter(f)
                for chunk in self.iter_range(key, 0, info.size):
                    writer.write(chunk)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return writer.digest()

    # -- listing and removal --

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix/` (recursively); [] when there is none."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; nothing to do when it does not exist."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under `prefix/`."""

    def presigned_url(self, key: str, *, expires_s: int) -> str | None:
        """A URL that lets a client download `key` directly for `expires_s` seconds, or None (no such thing)."""
        return None


# ---------------------------------------------------------------------------------------------- local directory


class LocalObjectStore(ObjectStore):
    """Objects as files below a root directory. Symlinks anywhere below the root are refused."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(os.path.realpath(root))  # created by the first write: a bad root fails that write
        self.url = str(self.root)

    def path(self, key: str) -> Path:
        """The file of `key`, refusing symlinks on the way and anything that escapes the root."""
        check_key(key)
        current = self.root
        for part in PurePosixPath(key).parts:
            current = current / part
            if current.is_symlink():
                raise ArtifactRejected(f"symlink in artifact path: {key!r}")
        return current

    def _open_temp(self, temp_key: str) -> BinaryWriter:
        path = self.path(temp_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return _SyncedFile(path)

    def _commit(self, temp_key: str, key: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path(temp_key), target)
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def stat(self, key: str) -> ObjectInfo | None:
        path = self.path(key)
        if not path.is_file():
            return None
        st = path.stat()
        return ObjectInfo(key=key, size=st.st_size, modified_at=datetime.fromtimestamp(st.st_mtime, UTC))

    def read_range(self, key: str, start: int, end: int) -> bytes:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        with path.open("rb") as f:
            f.seek(start)
            return f.read(max(0, end - start))

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        found: list[ObjectInfo] = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                full = Path(dirpath) / name
                if full.is_symlink():
                    continue
                st = full.stat()
                found.append(ObjectInfo(key=full.relative_to(self.root).as_posix(), size=st.st_size,
                                        modified_at=datetime.fromtimestamp(st.st_mtime, UTC)))
        return sorted(found, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        base = self.path(prefix)
        if base.is_dir():
            shutil.rmtree(base)


class _SyncedFile:
    """A file opened for writing that is fsynced before it closes (so that the rename publishes durable bytes)."""

    def __init__(self, path: Path) -> None:
        self._f = path.open("wb")

    def write(self, data: bytes, /) -> int:
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


# ---------------------------------------------------------------------------------------------- fsspec


class FsspecObjectStore(ObjectStore):
    """Objects below an fsspec URL (`s3://bucket/prefix`, `memory://x`, ...); commit = copy, then delete."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        import fsspec  # lazy: only stores that are not a directory need it

        self.url = url
        protocol, _, rest = url.partition("://")
        # a fresh instance per store: fsspec caches filesystems by their arguments, not by the environment
        # (AWS_ENDPOINT_URL), and a cached one may hold an event loop of a process that forked
        self.fs: Any = fsspec.filesystem(protocol, skip_instance_cache=True, **storage_options)
        self._base = rest.rstrip("/")

    def _full(self, key: str) -> str:
        return f"{self._base}/{check_key(key)}"

    def _open_temp(self, temp_key: str) -> BinaryWriter:
        handle: BinaryWriter = self.fs.open(self._full(temp_key), "wb")
        return handle

    def _commit(self, temp_key: str, key: str) -> None:
        self.fs.copy(self._full(temp_key), self._full(key))
        self.fs.rm_file(self._full(temp_key))

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            info = self.fs.info(self._full(key), refresh=True)
        except FileNotFoundError:
            return None
        if info.get("type") != "file":
            return None
        return ObjectInfo(key=key, size=int(info["size"]), modified_at=_modified(info))

    def read_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        data: bytes = self.fs.cat_file(self._full(key), start=start, end=end)
        return data

    def list(self, prefix: str) -> list[ObjectInfo]:
        try:
            found = self.fs.find(self._full(prefix), detail=True, refresh=True)
        except FileNotFoundError:
            return []
        root = self._strip(self._base)
        out = []
        for path, info in found.items():
            if info.get("type") != "file":
                continue
            key = str(path)[len(root) + 1:]
            out.append(ObjectInfo(key=key, size=int(info["size"]), modified_at=_modified(info)))
        return sorted(out, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._full(key))
        except FileNotFoundError:
            pass

    def delete_prefix(self, prefix: str) -> None:
        for info in self.list(prefix):
            self.delete(info.key)

    def presigned_url(self, key: str, *, expires_s: int) -> str | None:
        try:
            url: str = self.fs.sign(self._full(key), expiration=expires_s)
        except NotImplementedError:
            return None
        return url

    def _strip(self, path: str) -> str:
        stripped: str = self.fs._strip_protocol(path)
        return stripped.rstrip("/")


def _modified(info: dict[str, Any]) -> datetime | None:
    value = info.get("LastModified") or info.get("mtime") or info.get("created")
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return None


def open_object_store(location: str | Path) -> ObjectStore:
    """The store at `location`: a path or `file://` URL → LocalObjectStore; any other URL → FsspecObjectStore."""
    text = str(location)
    if isinstance(location, Path) or "://" not in text:
        return LocalObjectStore(text)
    if text.startswith("file://"):
        return LocalObjectStore(text.removeprefix("file://"))
    return FsspecObjectStore(text)
