"""Where a store lives: durable local files with a writer lock, or a URL.

Two locations share one small protocol (:class:`Location`): a local directory, written
through :class:`DurableLocalStore` (every key goes to a temporary file that is fsynced
and renamed, and the directories are fsynced before a commit is published), and any
URL fsspec understands (``memory://``, ``file://``, ``s3://`` ...), read-only except on
``s3://``.

On object storage there is no rename, and none is needed: every key is written by one
PUT, which replaces an object atomically (readers see the old bytes or the new ones),
and S3 reads are strongly consistent after a write. The commit protocol is therefore the
local one without the temporary files: rows past the committed length first, the commit
record last. The one writer is a lease, :class:`ObjectLease`: a ``writer.lock`` object
created with a conditional PUT (If-None-Match), renewed with If-Match on its own ETag
before every append and before every commit is published, and taken over only once it
has expired (again with If-Match, so two newcomers cannot both win). A writer that finds
its lease taken stops before writing anything.
"""
from __future__ import annotations

import asyncio
import fcntl
import importlib.util
import json
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from zarr.abc.store import Store as ZarrStore
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore

PARTIAL_SUFFIX = ".partial"
LOCK_NAME = "writer.lock"


class DurableLocalStore(LocalStore):
    """A zarr LocalStore whose writes survive power loss in commit order.

    Each key is written to ``<name>.<random>.partial`` next to its target, fsynced and
    renamed over the target. The directories touched are remembered and fsynced by
    :meth:`flush`, which the store calls before publishing a commit record, so the
    data a record points at is on disk before the record is. Bytes written are
    counted for the write-amplification benchmark.
    """

    def __init__(self, root: Path | str, *, read_only: bool = False) -> None:
        super().__init__(root, read_only=read_only)
        self._dirty_dirs: set[Path] = set()
        self.bytes_written = 0

    def with_read_only(self, read_only: bool = False) -> "DurableLocalStore":
        return DurableLocalStore(self.root, read_only=read_only)

    async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        path = self.root / key
        data = value.as_buffer_like()
        await asyncio.to_thread(_durable_put, path, data, exclusive)
        self._dirty_dirs.add(path.parent)
        self.bytes_written += len(memoryview(data).cast("B"))

    def flush(self) -> None:
        """fsync every directory a write touched since the last flush (the renames)."""
        dirs, self._dirty_dirs = sorted(self._dirty_dirs), set()
        if len(dirs) > 1:
            with ThreadPoolExecutor(max_workers=8) as pool:  # fsyncs of one journal overlap
                list(pool.map(fsync_path, dirs))
        elif dirs:
            fsync_path(dirs[0])


def _durable_put(path: Path, data, exclusive: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriterLock:
    """One writer per store: an exclusive ``flock`` on ``STORE/writer.lock``.

    The kernel drops the lock when its process dies, so a lock left by a killed writer
    never blocks the next one; the pid and host written into the file tell who holds
    it (for the refusal message) and who held it last (a stale record is reported).
    """

    def __init__(self, root: Path):
        self.path = root / LOCK_NAME
        self._fd: int | None = None
        self.stale_holder: dict | None = None

    def acquire(self) -> "WriterLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = (f"pid {holder.get('pid')} on host {holder.get('host')!r} (since {holder.get('since')})"
                   if holder else "another process")
            raise ValueError(
                f"store {str(self.path.parent)!r} is already open for writing by {who}; "
                f"a store takes one writer at a time: close the other writer or open this one read-only."
            ) from None
        previous = _read_holder(fd)
        if previous and not _holder_is_alive(previous):
            self.stale_holder = previous
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def renew(self) -> None:
        """Nothing to renew: the kernel holds an flock for as long as its process lives."""

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_holder(fd: int) -> dict | None:
    try:
        raw = os.pread(fd, 4096, 0)
        holder = json.loads(raw) if raw.strip() else None
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _holder_is_alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot tell from here; the flock was free, so it is not writing
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


class LeaseLost(ValueError):
    """This writer's lease on an object-store store was taken over by another writer."""


LEASE_SECONDS = 300.0  # a killed writer's lease blocks others this long; renewed by every append


class ObjectLease:
    """One writer per store on object storage: ``STORE/writer.lock`` holds the writer's id,
    pid, host and the time its lease expires. Created with If-None-Match, renewed and
    released with If-Match on the ETag this writer last wrote; an expired lease is taken
    over with If-Match on the ETag that was read, so of two newcomers one wins."""

    def __init__(self, location: "UrlLocation", ttl: float = LEASE_SECONDS):
        store = location.zarr_store
        self.fs, self.key = store.fs, f"{store.path}/{LOCK_NAME}"  # type: ignore[attr-defined]
        self.display, self.ttl = location.display, ttl
        self.owner = uuid.uuid4().hex
        self.etag: str | None = None
        self.stale_holder: dict | None = None

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "expires": now + self.ttl}).encode()

    def _put(self, **condition) -> str:
        out = sync(self.fs._pipe_file(self.key, self._record(), **condition))
        return str(out["ETag"])

    def _read(self) -> tuple[dict | None, str | None]:
        try:
            info = sync(self.fs._info(self.key, refresh=True))
            raw = sync(self.fs._cat_file(self.key))
        except FileNotFoundError:
            return None, None
        try:
            holder = json.loads(raw)
        except ValueError:
            holder = {}
        return (holder if isinstance(holder, dict) else {}), str(info.get("ETag"))

    def _conditional(self, **condition) -> str | None:
        """The new ETag of a conditional PUT of this writer's record, None when it did not go through."""
        try:
            return self._put(**condition)
        except (FileExistsError, FileNotFoundError, OSError):  # 412, the object gone, or the network
            return None

    def _create(self) -> bool:
        """Write the record where there is none; False when a lease object is there."""
        try:
            self.etag = self._put(mode="create")
            return True
        except FileExistsError:  # the conditional PUT's 412
            return False
        except OSError as exc:
            raise ValueError(f"store {self.display!r}: cannot write its writer lease ({type(exc).__name__}: {exc}); "
                             f"check the credentials and that the bucket takes writes.") from None

    def acquire(self) -> "ObjectLease":
        if self._create():
            return self
        holder, etag = self._read()
        if holder is not None and float(holder.get("expires", 0)) > time.time():
            raise ValueError(
                f"store {self.display!r} is already open for writing by pid {holder.get('pid')} on host "
                f"{holder.get('host')!r} (since {holder.get('since')}, lease until "
                f"{time.strftime('%H:%M:%S', time.localtime(float(holder.get('expires', 0))))}); a store takes one "
                f"writer at a time: close the other writer, or wait for its lease to expire if it was killed."
            )
        try:  # expired (a killed writer) or deleted meanwhile
            self.etag = self._put(IfMatch=etag) if etag else self._put(mode="create")
        except (FileExistsError, FileNotFoundError):
            raise ValueError(f"store {self.display!r}: another writer took the expired writer lease first; "
                             f"a store takes one writer at a time.") from None
        self.stale_holder = holder
        return self

    def renew(self) -> None:
        """Extend the lease, or stop: after a takeover this writer must not write a byte."""
        if self.etag is None:
            raise LeaseLost(f"store {self.display!r}: this writer no longer holds the store's lease; reopen the store "
                            f"with mode='a' to append.")
        renewed = self._conditional(IfMatch=self.etag)
        if renewed is None:
            # a failed conditional PUT, or a network error whose retry met our own new ETag: the record says whose it is
            holder, etag = self._read()
            if holder is not None and holder.get("owner") == self.owner and etag:
                renewed = self._conditional(IfMatch=etag)  # still ours: renew from the ETag it has now
        self.etag = renewed
        if renewed is None:
            raise LeaseLost(
                f"store {self.display!r}: this writer's lease expired and another writer took the store over; "
                f"nothing more was written by this one. Reopen the store to append after the other writer's episodes."
            )

    def release(self) -> None:
        if self.etag is None:
            return
        holder, etag = self._read()
        if etag == self.etag and holder is not None and holder.get("owner") == self.owner:
            sync(self.fs._rm_file(self.key))
        self.etag = None

    @property
    def held(self) -> bool:
        return self.etag is not None


# -- locations ----------------------------------------------------------------------


class Location(Protocol):
    """What the store needs from the place it lives."""

    display: str
    zarr_store: ZarrStore
    root: Path | None          # a local directory, or None for a URL

    def exists(self) -> bool: ...
    def read_json(self, key: str) -> dict | None: ...
    def list_prefix(self, prefix: str) -> list[str]: ...
    def chunk_indices(self, key: str) -> set[str]: ...
    def writer_lock(self, ttl: float | None = None) -> "WriterLock | ObjectLease": ...


class LocalLocation:
    def __init__(self, path: Path, writable: bool):
        self.root = path
        self.display = str(path)
        self.zarr_store: ZarrStore = DurableLocalStore(path, read_only=not writable)

    def writer_lock(self, ttl: float | None = None) -> WriterLock:
        return WriterLock(self.root)

    def exists(self) -> bool:
        return self.root.exists()

    def read_json(self, key: str) -> dict | None:
        path = self.root / key
        if not path.is_file():
            return None
        return _parse_json(path.read_bytes(), f"{self.display}/{key}")

    def list_prefix(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        out: list[str] = []
        for dirpath, _, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            out.extend(f"{rel}/{f}" for f in files)
        return out

    def chunk_indices(self, key: str) -> set[str]:
        """First chunk-grid index of every stored chunk of ``key`` (files under key/c/)."""
        try:
            names = os.listdir(self.root / key / "c")
        except FileNotFoundError:
            return set()
        return {n for n in names if not n.endswith(PARTIAL_SUFFIX)}


WRITABLE_SCHEMES = ("s3://",)  # object stores with conditional writes, which the writer lease needs


class UrlLocation:
    """A store reached through fsspec (object storage, ``memory://``, ``file://``);
    writable on ``s3://`` (any S3-compatible server; endpoint and keys from the usual
    ``AWS_*`` environment variables)."""

    def __init__(self, url: str, writable: bool):
        if writable and not url.startswith(WRITABLE_SCHEMES):
            raise ValueError(
                f"store {url!r} is a URL that is opened read-only here: writing needs s3:// (conditional writes "
                f"keep one writer) or a local path; write to one of those, or open this one read-only."
            )
        if writable and importlib.util.find_spec("s3fs") is None:
            raise ValueError(f"store {url!r} needs the s3fs package to write to object storage: pip install 'agent[io]'.")
        self.root = None
        self.display = url
        try:
            self.zarr_store = FsspecStore.from_url(url, read_only=not writable)
        except Exception as exc:  # fsspec raises its own types for unknown protocols
            raise ValueError(f"cannot reach store {url!r}: {type(exc).__name__}: {exc}") from None

    def writer_lock(self, ttl: float | None = None) -> "ObjectLease":
        return ObjectLease(self, LEASE_SECONDS if ttl is None else ttl)

    def exists(self) -> bool:
        return self.read_bytes("zarr.json") is not None or bool(self.list_prefix(""))

    def read_bytes(self, key: str) -> bytes | None:
        buf = sync(self.zarr_store.get(key, prototype=default_buffer_prototype()))
        return None if buf is None else buf.to_bytes()

    def read_json(self, key: str) -> dict | None:
        raw = self.read_bytes(key)
        return None if raw is None else _parse_json(raw, f"{self.display}/{key}")

    def list_prefix(self, prefix: str) -> list[str]:
        async def collect() -> list[str]:
            return [k async for k in self.zarr_store.list_prefix(prefix)]

        return sync(collect())

    def chunk_indices(self, key: str) -> set[str]:
        return {k.removeprefix(f"{key}/c/").split("/")[0] for k in self.list_prefix(f"{key}/c/")}


def _parse_json(raw: bytes, where: str) -> dict:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{where} is not valid JSON ({exc}); the store is damaged, run `agent fsck`.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where} holds JSON of type {type(value).__name__}, expected an object; the store is damaged.")
    return value


def location_for(where: str | Path, writable: bool) -> LocalLocation | UrlLocation:
    text = str(where)
    if "://" in text and not text.startswith("file://"):
        return UrlLocation(text, writable)
    if text.startswith("file://") and not writable:
        return UrlLocation(text, writable)
    return LocalLocation(Path(text.removeprefix("file://")), writable)
