"""Importers and exporters: one reader per format, registered by name.

Each reader turns a dataset on disk into an :class:`ImportedDataset` (episodes with
exact final observations, what it had to repair listed in ``notes``); one writer puts
that into a new store with lineage (source ``imported``, the format and path in the
store's ``imported_from`` attribute). Optional packages (h5py, pyarrow) are imported by
the reader that needs them, so formats without them work on a bare install.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from agent.store.importers.common import ImportedDataset, ImportedEpisode, Reader, check_new_store_path, write_store
from agent.store.importers.d4rl import read_d4rl, write_d4rl
from agent.store.importers.lerobot import read_lerobot
from agent.store.importers.minari import read_minari
from agent.store.importers.robomimic import read_robomimic
from agent.store.importers.zarr_v2 import read_zarr_v2
from agent.store.zarr_store import Store

READERS: dict[str, Reader] = {
    "d4rl": read_d4rl,
    "robomimic": read_robomimic,
    "minari": read_minari,
    "lerobot": read_lerobot,
    "zarr_v2": read_zarr_v2,
}
WRITERS: dict[str, Callable[[Store, Path], dict]] = {"d4rl": write_d4rl}


def import_dataset(fmt: str, src: str | Path, out: str | Path, *, quality: str = "", env_id: str | None = None,
                   **options: Any) -> dict:
    """Read ``src`` in format ``fmt`` and write it as a new store at ``out``, which must not
    exist; on any failure nothing is left at ``out``. The result lists the observation keys
    used, every source key skipped and why, and warnings about what could not be read."""
    if fmt not in READERS:
        raise ValueError(f"unknown import format {fmt!r}; known: {', '.join(READERS)}.")
    if not Path(src).exists():
        raise ValueError(f"cannot import {str(src)!r}: the path does not exist.")
    check_new_store_path(out)  # before reading: a large file is not read only to be refused
    data = READERS[fmt](Path(src), **options)
    return write_store(data, out, fmt=fmt, src=str(src), quality=quality, env_id=env_id)


def export_dataset(fmt: str, store_path: str | Path, out: str | Path) -> dict:
    """Write the committed episodes of the store at ``store_path`` as a ``fmt`` file at
    ``out``; an existing file there is replaced whole, a directory is refused."""
    if fmt not in WRITERS:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(WRITERS)}.")
    store = Store.open(store_path)
    return WRITERS[fmt](store, Path(out))


__all__ = ["READERS", "WRITERS", "ImportedDataset", "ImportedEpisode", "export_dataset", "import_dataset"]
