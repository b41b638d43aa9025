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

UploadWatches finds host writes no interception sees (C code) by their effect on the
source of a non_blocking H2D copy, compared at the host sync that covers the copy.
"""

from __future__ import annotations

import torch

from ..model import Site
from ..ops.host_writes import SourceSnapshot, unseen_write_race
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


class UploadWatches:
    """Sources of the device ops of a GPU run that read pinned memory asynchronously (a
    non_blocking H2D copy), each snapshotted when issued (a host memcpy, ops/host_writes.py)
    and compared at the first host sync that covers the op: bytes that changed were written
    by the host in between, a race even when no interception saw the write (C code).

    A source that device work may write in the window (a D2H copy into the same pinned
    buffer not yet covered by a host sync, before or after the copy) is not watched: its
    change would not be the host's. A source whose storage died is dropped unread (its
    bytes may belong to a new owner). Each entry holds a C++ weak reference, as PinnedBlocks
    does, so the pinned block is reused as without us."""

    def __init__(self):
        self._watches: list = []  # (snapshot, weak ref, alloc, agent, count, op, site)
        self._writes: dict = {}  # id(alloc) -> (alloc, agent, count): latest device write
        self._prune_at = 256  # drop completed writes when the table grows past this

    def __len__(self) -> int:
        return len(self._watches)

    def launched(self, hb, agent, pinned: list, op: str, site, queued: bool) -> None:
        """A device op was just issued on `agent`, touching pinned memory: `pinned` lists
        (tensor, alloc, (start, stop, region), is_write); `queued`: the host did not wait
        for it (a blocking copy leaves no window)."""
        count = agent.clock[agent.id]
        for t, alloc, read_set, write in pinned:
            if write:
                self._writes[id(alloc)] = (alloc, agent, count)
                self._drop([w for w in self._watches if w[2] is alloc])
                if len(self._writes) > self._prune_at:  # amortised O(1) per write
                    self._writes = {k: e for k, e in self._writes.items()
                                    if e[2] > _known(hb, e[1])}
                    self._prune_at = max(256, 2 * len(self._writes))
            elif queued and not self._device_write_pending(hb, alloc):
                storage = t.untyped_storage()
                snapshot = SourceSnapshot(storage.data_ptr(), *read_set, t.element_size())
                self._watches.append((snapshot, storage._weak_ref(), alloc, agent, count, op,
                                      site, read_set))

    def _device_write_pending(self, hb, alloc) -> bool:
        entry = self._writes.get(id(alloc))
        if entry is None:
            return False
        if entry[0] is alloc and entry[2] > _known(hb, entry[1]):
            return True
        del self._writes[id(alloc)]  # done (or a dead allocation's id reused)
        return False

    def host_synced(self, hb) -> None:
        """After a host sync (HappensBefore.on_host_sync): compare every watched source
        whose op the host now knows complete; a changed one is a race, deferred to the
        next launch or host access (a sync arrives inside C++, where raising is lost)."""
        if not self._watches:
            return
        done = [w for w in self._watches if w[4] <= _known(hb, w[3])]
        if not done:
            return
        seen_at = Site.here(1, 40)  # the user's sync call, below torch's and our frames
        for snapshot, weak, alloc, agent, count, op, site, read_set in done:
            if torch.UntypedStorage._expired(weak) or alloc.freed:
                continue  # its bytes may be another tensor's now: nothing to compare
            changed = snapshot.changed()
            if changed is not None:
                race = unseen_write_race(hb, alloc, agent, count, op, read_set, changed, site,
                                         seen_at, "at the host sync that covered the copy")
                if race is not None:
                    hb.defer(race)
        self._drop(done)

    def _drop(self, watches: list) -> None:
        if not watches:
            return
        gone = set(map(id, watches))
        self._watches = [w for w in self._watches if id(w) not in gone]
        for w in watches:
            torch.UntypedStorage._free_weak_ref(w[1])

    def clear(self) -> None:
        """The run ends: release every weak reference (nothing compared)."""
        self._drop(list(self._watches))
        self._writes.clear()


def _known(hb, agent) -> int:
    """The agent's own count as far as the host knows it (its ops up to it are done)."""
    clock = hb.host.clock
    return clock[agent.id] if agent.id < len(clock) else 0
