"""The GPU backend's index ring, on the CPU: its space management, and the path from
staged index values to a resolved pending access (a plain CPU buffer stands in for the
registered pinned memory, and every index tensor counts as device memory). What needs
a GPU (cudaHostRegister, the asynchronous copy, the dispatch mode calling it) is in
tests/gpu/."""

from __future__ import annotations

import torch

from pytest_streamorder.gpu.index_ring import ALIGN, IndexRing, RingSpace, _MARK
from pytest_streamorder.model import WRITE, HappensBefore
from pytest_streamorder.ops.indexed import indexed, pending_for

aten = torch.ops.aten
PUT = indexed(aten.index_put_.default)


def test_ring_space_is_fifo_and_wraps():
    space = RingSpace(64)
    a = space.take(20)  # 32 with alignment
    b = space.take(16)
    assert (a, b) == (0, 32)
    assert space.take(32) is None  # only [48, 64) is left
    space.release(b)  # b is free but a, taken before it, is not: nothing comes back
    assert space.take(17) is None
    space.release(a)  # now both: the ring is empty again
    assert space.take(32) == 0
    c = space.take(16)
    assert c == 32
    space.release(0)  # the oldest: [0, 32) comes back, c still holds [32, 48)
    assert space.take(16) == 48  # the end first
    assert space.take(32) == 0  # then wrap to the front, up to c
    assert space.take(16) is None  # full: [32, 48) is still c's


def test_ring_space_never_hands_out_overlapping_spans():
    import random

    rng = random.Random(0)
    space = RingSpace(256)
    live = {}
    for _ in range(2000):
        if live and rng.random() < 0.45:
            start = rng.choice(list(live))
            space.release(start)
            del live[start]
            continue
        n = rng.randint(1, 80)
        start = space.take(n)
        if start is None:
            continue
        size = -(-n // ALIGN) * ALIGN
        assert 0 <= start and start + size <= 256
        for s, e in live.items():
            assert start + size <= s or e <= start, "overlapping spans"
        live[start] = start + size


def _ring(nbytes=1024):
    return IndexRing(torch.zeros(nbytes, dtype=torch.uint8), is_device=lambda t: True,
                     copy=lambda dst, src: dst.copy_(src))


def _publish(hb, ring, stream, buf_alloc, slots):
    """index_put_ of `slots` into an int64[8] buffer on `stream`, staged like the GPU
    backend does it right after the launch."""
    pending = pending_for((8,), (1,), 0, 8)
    hb.launch(stream, "aten.index_put_", [(buf_alloc, pending, WRITE)])
    idx = torch.tensor(slots)
    args = (object(), [idx], torch.zeros(len(slots)))
    ring.stage(hb, PUT, pending, stream, args, {}, ((8,), (1,), 0, 8),
               stream.clock[stream.id])
    return pending


def test_disjoint_slots_resolve_silent_and_a_shared_slot_is_a_race():
    for shared, races in ((False, 0), (True, 1)):
        hb = HappensBefore()
        ring = _ring()
        s1, s2 = hb.new_stream("fwd_a"), hb.new_stream("fwd_b")
        buf = hb.allocate(64, "new_seq_lens_buf")
        _publish(hb, ring, s1, buf, [1, 2])
        _publish(hb, ring, s2, buf, [2, 6] if shared else [5, 6])
        ring.harvest(hb)
        assert len(ring.entries) == 2, "read before any host sync covered the copies"
        hb.sync_stream(s1)
        ring.harvest(hb)
        assert len(ring.entries) == 1  # s1's values only
        hb.sync_stream(s2)
        ring.harvest(hb)
        assert not ring.entries and not ring.space.live  # all read, all space back
        hb.flush()
        assert len(hb.races) == races
        assert hb.unresolved == 0


def test_force_harvest_at_the_end_and_unknown_cases():
    hb = HappensBefore()
    ring = _ring(nbytes=64)
    s1 = hb.new_stream("s1")
    buf = hb.allocate(64, "buf")
    _publish(hb, ring, s1, buf, [0])
    ring.harvest(hb, force=True)  # after torch.cuda.synchronize()
    assert not ring.entries
    # Non-contiguous index values would need a device copy: unknown, never a report.
    pending = pending_for((8,), (1,), 0, 8)
    hb.launch(s1, "aten.index_put_", [(buf, pending, WRITE)])
    idx = torch.arange(8)[::2]
    ring.stage(hb, PUT, pending, s1, (None, [idx], None), {}, ((8,), (1,), 0, 8), 1)
    assert pending.resolved and ring.unknown == 1 and hb.unresolved == 1
    # More index bytes than the ring holds: unknown.
    pending = pending_for((8,), (1,), 0, 8)
    hb.launch(s1, "aten.index_put_", [(buf, pending, WRITE)])
    ring.stage(hb, PUT, pending, s1, (None, [torch.zeros(9, dtype=torch.int64)], None), {},
               ((8,), (1,), 0, 8), 1)
    assert pending.resolved and ring.unknown == 2


def test_entries_keep_no_tensor_alive():
    hb = HappensBefore()
    ring = _ring()
    s1 = hb.new_stream("s1")
    buf = hb.allocate(64, "buf")
    _publish(hb, ring, s1, buf, [3])
    entry = ring.entries[0]
    assert entry.args[1] == [_MARK] and entry.args[2] is _MARK
    assert all(v.untyped_storage().data_ptr() == ring.buffer.untyped_storage().data_ptr()
               for v in entry.values)
