"""Pinned host blocks of a GPU run, tracked without keeping them alive.

A detector must not change the program's allocator behaviour: holding pinned storages
until the run ends kept PyTorch's CachingHostAllocator from ever reusing a block (its own
test_caching_pinned_memory failed). So each entry holds a C++ *weak* reference to the
storage (`UntypedStorage._weak_ref()`, what torch.multiprocessing's StorageWeakRef uses):
it does not keep the data alive, the block goes back to the allocator when the program
drops its last reference, exactly as without us. It is not a Python weakref, so nothing
of ours runs inside the garbage collector (a `weakref.finalize` on pinned storages crashed
in the collector on torch 2.11; no callback here at all). It does keep the small
StorageImpl struct from being freed, so `_expired()` stays a safe question.

A block's death is learnt when its address is seen again (the allocator handed it to a
new tensor) and at `sweep()`: the model then frees the allocation (`on_free`), and the
new storage becomes a new allocation. A storage that aliases a live registered one (e.g.
`torch.from_numpy(pinned.numpy())`) is the same bytes and finds the same allocation.
"""

from __future__ import annotations

import torch

from ..ops.pinned import PinnedRegistry


class PinnedBlocks:
    """Pinned host storages by address -> their model allocations (the interface of
    ops.pinned.PinnedRegistry: key, lookup, add, clear, truthiness)."""

    def __init__(self, on_free=None):
        self._entries: dict[int, tuple[object, int]] = {}  # address -> (alloc, weak ref)
        self._on_free = on_free  # called with the model allocation of a dead storage
        self._sweep_at = 64  # sweep when the table grows past this (amortised O(1))

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    key = staticmethod(PinnedRegistry.key)  # one rule for what a storage's address is

    def lookup(self, t: torch.Tensor):
        """The model allocation of the live storage registered at `t`'s address, else None
        (a dead entry found here is dropped, and its allocation freed in the model)."""
        if not self._entries:
            return None
        key = self.key(t)
        if key is None:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        alloc, weak = entry
        if torch.UntypedStorage._expired(weak):
            self._drop(key, alloc, weak)
            return None
        return alloc

    def add(self, t: torch.Tensor, alloc):
        """Register `t`'s storage as pinned, as the model allocation `alloc`."""
        storage = t.untyped_storage()
        key = storage.data_ptr()
        old = self._entries.get(key)
        if old is not None:  # the block of a storage we did not see die
            self._drop(key, *old)
        self._entries[key] = (alloc, storage._weak_ref())
        if len(self._entries) > self._sweep_at:
            self.sweep()
            self._sweep_at = max(64, 2 * len(self._entries))
        return alloc

    def live_storages(self) -> list:
        """The registered storages still alive (new strong references: drop them soon)."""
        live = []
        for _alloc, weak in self._entries.values():
            storage = torch.UntypedStorage._new_with_weak_ptr(weak)
            if storage is not None:
                live.append(storage)
        return live

    def sweep(self) -> int:
        """Drop every entry whose storage is gone; returns how many."""
        dead = [(key, alloc, weak) for key, (alloc, weak) in self._entries.items()
                if torch.UntypedStorage._expired(weak)]
        for key, alloc, weak in dead:
            self._drop(key, alloc, weak)
        return len(dead)

    def _drop(self, key: int, alloc, weak: int) -> None:
        del self._entries[key]
        torch.UntypedStorage._free_weak_ref(weak)
        if self._on_free is not None:
            self._on_free(alloc)

    def clear(self) -> None:
        """The run ends: release every weak reference (no model frees)."""
        entries, self._entries = self._entries, {}
        for _alloc, weak in entries.values():
            torch.UntypedStorage._free_weak_ref(weak)
