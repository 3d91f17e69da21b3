"""Guided data augmentation: augmentations, guides and filters (README.md in this folder).

Python API: :func:`register_augmentation`, :func:`register_guide`, :func:`register_filter`
to add your own; :func:`augment` (``agent augment``) to run the pipeline on a store;
:class:`Augmenter` to run it in memory.
"""
from agent.augment.filters import DynamicsEnsembleFilter, FilterResult, SimReplayFilter, capped_mixture
from agent.augment.geometry import PlanarMap, apply_map, geometry_for
from agent.augment.registry import (AUGMENTATIONS, FILTERS, GUIDES, AugmentContext, register_augmentation,
                                    register_filter, register_guide)
from agent.augment.run import AugmentConfig, Augmenter, augment, list_registered, load_source
from agent.augment.segment import Segment, cut_segments, segment_to_episode

__all__ = ["AUGMENTATIONS", "AugmentConfig", "AugmentContext", "Augmenter", "DynamicsEnsembleFilter", "FILTERS",
           "FilterResult", "GUIDES", "PlanarMap", "Segment", "SimReplayFilter", "apply_map", "augment", "capped_mixture",
           "cut_segments", "geometry_for", "list_registered", "load_source", "register_augmentation", "register_filter",
           "register_guide", "segment_to_episode"]
