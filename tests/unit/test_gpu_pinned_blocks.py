"""The GPU backend's pinned-block bookkeeping (gpu/pinned.py), on the CPU: it must not
keep storages alive (so PyTorch's host caching allocator reuses blocks as without the
detector), must notice a dead block when its address comes back, must never hand out a
freed model allocation, and runs no code of ours inside the garbage collector.

Plain CPU storages stand in for pinned ones: the bookkeeping only uses the storage's
address and a C++ weak reference, the same for both. The GPU half (real pinned memory,
the dispatch mode and trace callbacks running) is tests/gpu/test_pinned_blocks_gpu.py.
"""

from __future__ import annotations

import gc

import torch

from pytest_streamorder.gpu.pinned import PinnedBlocks
from pytest_streamorder.model import HappensBefore

use_count = torch._C._storage_Use_Count


def _blocks():
    hb = HappensBefore()
    freed = []

    def on_free(alloc):
        freed.append(alloc)
        hb.free(alloc)

    return hb, PinnedBlocks(on_free=on_free), freed


def _register(hb, blocks, t, name="pinned"):
    alloc = hb.allocate(t.untyped_storage().nbytes(), name, space="host")
    return blocks.add(t, alloc)


def test_registering_does_not_keep_the_storage_alive():
    hb, blocks, freed = _blocks()
    t = torch.arange(256, dtype=torch.float32)
    storage = t.untyped_storage()
    before = use_count(storage._cdata)
    alloc = _register(hb, blocks, t)
    assert use_count(storage._cdata) == before  # no strong reference taken
    assert blocks.lookup(t) is alloc and blocks.lookup(t[10:20]) is alloc  # views too
    del t, storage
    assert blocks.sweep() == 1 and freed == [alloc] and not blocks
    assert alloc.freed


def test_a_block_handed_out_again_is_a_new_allocation():
    """A host allocator handing the same address to a new storage: simulated with two
    storages over one external buffer, the first dropped before the second is made."""
    hb, blocks, freed = _blocks()
    memory = bytearray(4096)
    first = torch.frombuffer(memory, dtype=torch.float32)
    address = first.data_ptr()
    old = _register(hb, blocks, first, "first")
    hb.host_access("host write", [(old, 0, 4096, True)])
    del first
    second = torch.frombuffer(memory, dtype=torch.float32)
    assert second.data_ptr() == address
    assert blocks.lookup(second) is None  # the old owner is gone: not its allocation
    assert freed == [old] and old.freed
    new = _register(hb, blocks, second, "second")
    assert new is not old and blocks.lookup(second) is new
    hb.host_access("host read", [(new, 0, 4096, False)])  # a live allocation: no error
    assert not hb.races


def test_a_new_registration_at_a_known_address_retires_the_old_one():
    """add() without a lookup first (a fresh pinned allocation seen by the modes)."""
    hb, blocks, freed = _blocks()
    memory = bytearray(1024)
    first = torch.frombuffer(memory, dtype=torch.uint8)
    old = _register(hb, blocks, first)
    del first
    second = torch.frombuffer(memory, dtype=torch.uint8)
    new = _register(hb, blocks, second)
    assert freed == [old] and blocks.lookup(second) is new and len(blocks) == 1


def test_a_live_alias_finds_the_same_allocation():
    """Another storage over the bytes of a live registered one (from_numpy of its NumPy
    view, frombuffer) is the same memory: the same allocation, nothing freed."""
    hb, blocks, freed = _blocks()
    memory = bytearray(512)
    owner = torch.frombuffer(memory, dtype=torch.int32)
    alloc = _register(hb, blocks, owner)
    alias = torch.frombuffer(memory, dtype=torch.int32)
    assert alias.untyped_storage()._cdata != owner.untyped_storage()._cdata
    assert blocks.lookup(alias) is alloc and freed == []
    del alias
    assert blocks.lookup(owner) is alloc and freed == []


def test_never_returns_a_freed_allocation_under_churn():
    """Many storages registered and dropped, reference cycles collected by the garbage
    collector in between: every lookup gives a live allocation or None."""
    hb, blocks, freed = _blocks()
    keep = []
    for i in range(300):
        t = torch.full((16 + i % 7,), float(i))
        alloc = _register(hb, blocks, t)
        holder = [t]
        holder.append(holder)  # a cycle: only the collector frees it
        if i % 3 == 0:
            keep.append(t)
        del t, holder
        if i % 60 == 0:
            gc.collect()
        for k in keep[-5:]:
            found = blocks.lookup(k)
            assert found is not None and not found.freed
        assert not alloc.freed or alloc in freed
        if len(keep) > 20:
            keep.pop(0)
    gc.collect()
    blocks.sweep()
    assert all(not blocks.lookup(k).freed for k in keep)
    assert len(blocks) == len({k.data_ptr() for k in keep})  # sweep bounds the table
    assert len(set(map(id, freed))) == len(freed)  # each freed once


def test_clear_releases_everything_without_model_frees():
    hb, blocks, freed = _blocks()
    ts = [torch.zeros(8) for _ in range(5)]
    for t in ts:
        _register(hb, blocks, t)
    blocks.clear()
    assert not blocks and freed == []
    assert all(blocks.lookup(t) is None for t in ts)


def test_meta_tensors_have_no_block():
    hb, blocks, _ = _blocks()
    _register(hb, blocks, torch.zeros(4))
    assert PinnedBlocks.key(torch.empty(3, device="meta")) is None
    assert blocks.lookup(torch.empty(3, device="meta")) is None
