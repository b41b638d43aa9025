"""Device and pinned host memory of a run in the model: a CUDA storage becomes a model
allocation when first seen (or when an op allocates it) and is freed by the allocator's
trace callback; pinned host storages are registered in PinnedBlocks (pinned.py), which
does not keep them alive, and freed in the model when their death is noticed."""

from __future__ import annotations

import torch

from ..model import Site
from ..ops.frames import user_location_here
from ..ops.naming import TensorLabel
from ..ops.ranges import storage_base
from .pinned import PinnedBlocks


class DeviceMemory:
    """Part of CudaBackend: its model allocations (`_live`: device, `_pinned`: host)."""

    def _alloc_of(self, t: torch.Tensor, stop: int, site: Site):
        """The model allocation of a CUDA tensor's storage, made on first sight."""
        base = storage_base(t)
        alloc = self._live.get(base)
        if alloc is None:
            alloc = self._allocate(t, base, None, site, "")
        elif stop > alloc.nbytes:  # storage grown in place
            alloc.nbytes = t.untyped_storage().nbytes()
        return alloc

    def _allocate(self, t: torch.Tensor, base: int, agent, site: Site, op: str):
        nbytes = t.untyped_storage().nbytes()
        alloc = self.hb.allocate(nbytes, TensorLabel(op, t.dtype, tuple(t.shape), site), site, stream=agent,
                                 space="device", address=base)
        self._live[base] = alloc
        return alloc

    def _register_pinned(self, t: torch.Tensor, site: Site):
        alloc = self._pinned.lookup(t)
        if alloc is not None:
            return alloc
        label = TensorLabel("pinned", t.dtype, tuple(t.shape), site)
        alloc = self.hb.allocate(t.untyped_storage().nbytes(), label, site, space="host")
        # Not kept alive (the host allocator reuses the block as without us); see pinned.py.
        return self._pinned.add(t, alloc)

    def _pinned_freed(self, alloc) -> None:
        """PinnedBlocks noticed that a registered pinned storage is gone."""
        if self.active:
            self.hb.free(alloc, user_location_here(2))

    def _pinned_of(self, t: torch.Tensor, site: Site):
        """The model allocation of a pinned host tensor (registered on first sight), or
        None for pageable memory."""
        alloc = self._pinned.lookup(t)
        if alloc is None and t.numel() > 0 and PinnedBlocks.key(t) is not None and t.is_pinned():
            alloc = self._register_pinned(t, site)
        return alloc
