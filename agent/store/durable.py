"""Where a store lives: durable local files with a writer lock, or a read-only URL.

Two locations share one small protocol (:class:`Location`): a local directory, written
through :class:`DurableLocalStore` (every key goes to a temporary file that is fsynced
and renamed, and the directories are fsynced before a commit is published), and any
URL fsspec understands (``memory://``, ``file://``, ``s3://`` ...), opened read-only.
"""
from __future__ import annotations

import asyncio
import fcntl
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


class LocalLocation:
    def __init__(self, path: Path, writable: bool):
        self.root = path
        self.display = str(path)
        self.zarr_store: ZarrStore = DurableLocalStore(path, read_only=not writable)

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


class UrlLocation:
    """A store reached through fsspec (object storage, ``memory://``, ``file://``), read-only."""

    def __init__(self, url: str, writable: bool):
        if writable:
            raise ValueError(
                f"store {url!r} is a URL; URLs are opened read-only here, write to a local path and upload it."
            )
        self.root = None
        self.display = url
        try:
            self.zarr_store = FsspecStore.from_url(url, read_only=True)
        except Exception as exc:  # fsspec raises its own types for unknown protocols
            raise ValueError(f"cannot reach store {url!r}: {type(exc).__name__}: {exc}") from None

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
