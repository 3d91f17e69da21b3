"""The zarr-backed demonstration store (layout: shared DATA.md)."""
from agent.store.cache import TransitionCache, load_transitions
from agent.store.zarr_store import EpisodeAttrs, Store

__all__ = ["EpisodeAttrs", "Store", "TransitionCache", "load_transitions"]
