"""A learner's (K-)update captured as one CUDA graph.

``learner.update`` launches hundreds of small kernels (K critic steps, target updates,
the actor and temperature step); on a GPU at the sizes of these methods the launches,
not the arithmetic, set the pace. :class:`GraphedUpdate` records them once and replays
them with one launch per update.

What capture needs, and how it is met here:
- no host synchronisation inside the update (the learners never call ``.item()``; their
  metrics are tensors read when logged);
- fixed shapes and addresses: the batch is copied into static input tensors before each
  replay, and the returned metrics are static tensors overwritten by each replay (read
  them, or clone them, before the next call);
- optimizer state on the device: the learners' Adam is fused, whose step counters live
  on the device, and its lean step (``common._LeanAdam``) has no host-side checks that
  capture would forbid;
- warm-up before capture (PyTorch's rule for whole-network capture): the first batch is
  used for ``warmup`` eager updates on a side stream, which also create the optimizer
  state. They are real updates: a graphed run makes ``warmup`` more updates than it
  counts, all on its first batch.

Randomness (the policy's samples) comes from the default CUDA generator, whose state
capture registers, so every replay draws new numbers.
"""
from __future__ import annotations

from typing import Callable

import torch

Batch = dict[str, torch.Tensor]


class GraphedUpdate:
    """``update(batch)`` as a CUDA graph, captured on the first call."""

    def __init__(self, update: Callable[[Batch], dict[str, torch.Tensor]], warmup: int = 3):
        if not torch.cuda.is_available():
            raise ValueError("a CUDA-graph update needs a CUDA device, and torch sees none; run without --cuda-graph.")
        if warmup < 1:
            raise ValueError(f"capture needs at least one warm-up update, got warmup={warmup}.")
        self.update, self.warmup = update, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: Batch = {}
        self.out: dict[str, torch.Tensor] = {}

    def _check(self, batch: Batch) -> None:
        for k, v in batch.items():
            if v.device.type != "cuda":
                raise ValueError(f"a CUDA-graph update takes batches on the GPU; {k!r} is on {v.device}.")
        if self.graph is None:
            return
        if set(batch) != set(self.static):
            raise ValueError(f"the captured update takes the keys {sorted(self.static)}, got {sorted(batch)}.")
        for k, v in batch.items():
            if v.shape != self.static[k].shape or v.dtype != self.static[k].dtype:
                raise ValueError(f"the captured update takes {k!r} of shape {tuple(self.static[k].shape)} "
                                 f"({self.static[k].dtype}), got {tuple(v.shape)} ({v.dtype}); batch shapes are fixed once captured.")

    def capture(self, batch: Batch) -> None:
        self.static = {k: v.detach().clone() for k, v in batch.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.update(self.static)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self.update(self.static)

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        self._check(batch)
        if self.graph is None:
            self.capture(batch)
        else:
            for k, v in batch.items():
                self.static[k].copy_(v)
        assert self.graph is not None
        self.graph.replay()
        return self.out
