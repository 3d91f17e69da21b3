"""The zarr-backed demonstration store (layout: docs/store.md)."""
from agent.store.cache import ImageFrames, TransitionCache, load_transitions
from agent.store.fsck import fsck
from agent.store.sampler import Sampler
from agent.store.zarr_store import SOURCES, EpisodeAttrs, Store

__all__ = ["EpisodeAttrs", "ImageFrames", "SOURCES", "Sampler", "Store", "TransitionCache", "fsck", "load_transitions"]
