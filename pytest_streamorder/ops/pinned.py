"""Pinned host memory: which host storages are pinned, and their model allocations.

Keyed by the storage's address, so every view of a pinned tensor finds it. A backend
either lets an entry go with its storage (`on_free`, the simulator: the model frees the
allocation and the address may be reused) or keeps every registered storage alive
until `clear()` (the GPU backend, so that an address names one pinned block for the
whole run)."""

from __future__ import annotations

import weakref

import torch


class PinnedRegistry:
    def __init__(self, on_free=None):
        self._allocs: dict[int, object] = {}  # storage address -> model Allocation
        # The same dict, for per-call checks that must not pay a method call: read only.
        self.allocs = self._allocs
        self._keep: list = []  # storages kept alive (when there is no on_free)
        self._on_free = on_free

    def __bool__(self) -> bool:
        return bool(self._allocs)

    @staticmethod
    def key(t: torch.Tensor) -> int | None:
        """The address of a host tensor's storage; None for device or storage-less tensors."""
        try:
            if t.device.type != "cpu":
                return None
            return t.untyped_storage().data_ptr()
        except Exception:  # meta, sparse, a wrapper subclass: not pinned memory
            return None

    def lookup(self, t: torch.Tensor):
        """The model allocation of `t`'s storage if it is registered, else None."""
        if not self._allocs:
            return None
        key = self.key(t)
        return None if key is None else self._allocs.get(key)

    def add(self, t: torch.Tensor, alloc):
        """Register `t`'s storage as pinned, as the model allocation `alloc`."""
        storage = t.untyped_storage()
        key = storage.data_ptr()
        self._allocs[key] = alloc
        if self._on_free is None:
            self._keep.append(storage)
        else:
            weakref.finalize(storage, self._drop, key, alloc)
        return alloc

    def _drop(self, key: int, alloc) -> None:
        if self._allocs.get(key) is alloc:
            del self._allocs[key]
            self._on_free(alloc)

    def clear(self) -> None:
        self._allocs.clear()
        self._keep.clear()
