"""Index values of indexed ops on the real GPU, for exact element sets.

An indexed op (index_put_, scatter_, masked_fill_, gathers: ops/indexed.py) touches the
elements its index tensors name, and on a GPU those values exist only when the op runs.
Right after the op, on the same stream, the backend copies the index tensors into a
private pinned ring (`stage`): plain host memory registered with cudaHostRegister once
per process, never taken from torch's caching host allocator, so the program's pinned
allocations behave as without the detector. The op's access to `self` is issued to the
model as a Pending (whole view as superset); `harvest` resolves it from the copied
values once the model's host clock says a host sync covered the op (then the copy,
queued after it on the same stream, is done too), and at the end of the run after
torch.cuda.synchronize().

What it cannot do (the access then resolves as unknown: nothing is reported for it,
`hb.unresolved` counts it; no false alarm, a race it hides is missed):
- during CUDA graph capture (no copies may be added to a captured graph);
- a non-contiguous device index tensor (copying it would allocate device memory);
- index values that do not fit in the free part of the ring (it is not grown while a
  run holds entries; a stream never synced until the end keeps its entries);
- when cudaHostRegister fails (the ring is then off for the process).
An op that synced inside (a boolean mask goes through nonzero) is resolved only at a
host sync covering a later op of its stream, or at the end.
"""

from __future__ import annotations

from collections import deque

import torch

from ..ops.indexed import touched

aten = torch.ops.aten
RING_BYTES = 8 << 20
ALIGN = 16
_MARK = object()  # stands in for an index tensor in an argument skeleton


class RingSpace:
    """First-in first-out space in a ring of `capacity` bytes: take() hands out
    [start, start + n) or None when no contiguous free space is left; release()
    marks a span free, and space comes back once everything taken before it is free."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.head = 0  # where the next span starts
        self.live: deque = deque()  # [start, end, released] in the order taken

    def take(self, n: int) -> int | None:
        n = max(ALIGN, -(-n // ALIGN) * ALIGN)
        if n > self.capacity:
            return None
        if not self.live:
            start = 0
        else:
            tail = self.live[0][0]  # the oldest span still taken
            if self.head > tail:  # taken: [tail, head); free: [head, capacity) and [0, tail)
                start = self.head if self.head + n <= self.capacity else 0 if n <= tail else None
            else:  # wrapped: taken [tail, capacity) and [0, head); free: [head, tail)
                start = self.head if self.head + n <= tail else None
        if start is None:
            return None
        self.head = start + n
        self.live.append([start, start + n, False])
        return start

    def release(self, start: int) -> None:
        for span in self.live:
            if span[0] == start and not span[2]:
                span[2] = True
                break
        while self.live and self.live[0][2]:
            self.live.popleft()


class _Entry:
    __slots__ = ("pending", "agent_id", "need", "values", "ix", "layout", "args", "kwargs",
                 "start")

    def __init__(self, pending, agent_id, need, values, ix, layout, args, kwargs, start):
        self.pending, self.agent_id, self.need = pending, agent_id, need
        self.values, self.ix, self.layout = values, ix, layout
        self.args, self.kwargs, self.start = args, kwargs, start


class IndexRing:
    """Staged index values of one run's indexed ops (see the module docstring).

    buffer: a uint8 host tensor (registered pinned memory on a GPU); is_device(t):
    whether t must be copied (device memory) or can be cloned now (host memory);
    copy(dst, src): the asynchronous copy on the current stream."""

    def __init__(self, buffer: torch.Tensor, is_device=None, copy=None):
        self.buffer = buffer
        self.space = RingSpace(buffer.numel())
        self.entries: deque = deque()
        self._is_device = is_device or (lambda t: t.is_cuda)
        self._copy = copy or (lambda dst, src: aten.copy_.default(dst, src, True))
        self.staged = 0  # entries staged this run
        self.unknown = 0  # pending accesses that could not be staged

    def stage(self, hb, ix, pending, agent, args, kwargs, layout, need: int) -> None:
        """Queue the copies of the index values of an op just launched on `agent`
        (whose own count `need` a host sync must cover before they are read)."""
        values = ix.index_tensors(args, kwargs)
        device = [v for v in values if self._is_device(v)]
        if any(not v.is_contiguous() for v in device):
            return self._unknown(hb, pending)
        sizes = [-(-v.numel() * v.element_size() // ALIGN) * ALIGN for v in device]
        start = self.space.take(sum(sizes)) if device else None
        if device and start is None:
            return self._unknown(hb, pending)
        staged, at = [], start
        for v in values:
            if self._is_device(v):
                n = v.numel() * v.element_size()
                host = self.buffer[at:at + n].view(v.dtype).view(v.shape)
                self._copy(host, v)
                at += -(-n // ALIGN) * ALIGN
                staged.append(host)
            else:  # host index values: as they are now (CUDA copies them at the call)
                staged.append(aten.clone.default(v))
        self.staged += 1
        entry = _Entry(pending, agent.id, need if device else 0, staged, ix, layout,
                       _skeleton(args), {k: _skeleton(v) for k, v in kwargs.items()}, start)
        self.entries.append(entry)

    def harvest(self, hb, force: bool = False) -> None:
        """Resolve every staged entry a host sync has covered (all with force, after
        torch.cuda.synchronize())."""
        if not self.entries:
            return
        clock = hb.host.clock
        kept = deque()
        for e in self.entries:
            known = clock[e.agent_id] if e.agent_id < len(clock) else 0
            if not force and e.need > known:
                kept.append(e)
                continue
            size, stride, offset, itemsize = e.layout
            exact = touched(e.ix, size, stride, offset, itemsize, e.values, e.args, e.kwargs)
            e.values = None
            if e.start is not None:
                self.space.release(e.start)
            hb.resolve(e.pending, exact)
        self.entries = kept

    def _unknown(self, hb, pending) -> None:
        self.unknown += 1
        hb.resolve(pending, None)

    def clear(self) -> None:
        """Drop what a run left (its model is gone); the memory stays for the next run
        (the counters too, so a test can read them after the run)."""
        self.entries.clear()
        self.space = RingSpace(self.buffer.numel())


def _skeleton(value):
    """The argument with every tensor replaced by a mark: what `touched` needs (dims,
    where an index list has None), without keeping any tensor alive."""
    if isinstance(value, torch.Tensor):
        return _MARK
    if isinstance(value, (list, tuple)):
        return type(value)(_skeleton(v) for v in value)
    return value


_RING: IndexRing | None = None
_RING_FAILED = False


def process_ring() -> IndexRing | None:
    """The process's ring on the GPU: RING_BYTES of host memory registered as pinned
    with cudaHostRegister on first use (None if that failed)."""
    global _RING, _RING_FAILED
    if _RING is None and not _RING_FAILED:
        buffer = torch.empty(RING_BYTES, dtype=torch.uint8)  # plain CPU allocator
        try:
            err = torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), RING_BYTES, 0)
        except Exception:  # noqa: BLE001  (no binding, no driver: run without the ring)
            err = -1
        if int(err) != 0:
            _RING_FAILED = True
            return None
        _RING = IndexRing(buffer)
    return _RING
