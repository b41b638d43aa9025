"""Pinned host memory of the virtual device: a model of PyTorch's CachingHostAllocator.

`pin_memory()`, `empty(..., pin_memory=True)` and a non_blocking D2H `.to("cpu")` take a
block from this pool. Like CUDA's, a freed block is handed out again (same `data_ptr()`)
only once every non_blocking copy that used it has completed: CUDA records an event on
the copy's stream and queries it at the next allocation; here the copy's queued item is
kept with the block and asked the scheduler's `completed` (it has run and the host's
virtual clock reached its finish), the same question an event query asks. A block nobody
copied from or to is reused at once.

A block is a Python bytearray, and the tensor handed out is a torch.frombuffer view of it:
its storage is the tensor's own, so the pinned registry still sees it die, while the bytes
(and the address) stay in the pool. Sizes are rounded up to a power of two, as CUDA's
host allocator does.

Host accesses no interception sees (C code) show here, on the copies that use a block:
- the source of a queued non_blocking H2D copy is snapshotted when it is issued and
  compared when the copy runs (`upload_queued`, ops/host_writes.py): changed bytes are a
  host write in between, reported as a race with the copy's stack and that window;
- the target of a queued non_blocking D2H copy holds poison until the copy runs
  (`download_queued`), so an early read by C code shows as a value no program expects.
Neither is done while another queued copy still uses the block (its bytes are not the
host's to judge then).
"""

from __future__ import annotations

import ctypes
import weakref

import torch

from ..model import Site
from ..ops.host_writes import SourceSnapshot, unseen_write_race
from ..ops.ranges import contiguous_strides, extent, tensor_set

ALIGN = 64
MIN_BLOCK = 512


def _size_class(nbytes: int) -> int:
    size = MIN_BLOCK
    while size < nbytes:
        size *= 2
    return size


class HostBlock:
    __slots__ = ("buffer", "offset", "size", "address", "pending", "device_writes", "__weakref__")

    def __init__(self, size: int):
        self.buffer = bytearray(size + ALIGN)
        probe = torch.frombuffer(self.buffer, dtype=torch.uint8)
        self.offset = -probe.data_ptr() % ALIGN
        self.address = probe.data_ptr() + self.offset
        self.size = size
        self.pending: list = []  # the queued copies (scheduler items) that use the block
        self.device_writes = 0  # D2H copies into it that have run


class PinnedHostAllocator:
    def __init__(self, completed, reusable=None):
        self._completed = completed  # item -> bool: the host sees it complete (virtual time)
        # items -> bool: may a block they hold be handed out (an observation of the run)
        self._reusable = reusable or (lambda items: all(map(completed, items)))
        self._free: dict[int, list[HostBlock]] = {}  # size class -> freed blocks
        self._live: dict[int, HostBlock] = {}  # address -> block handed out
        self.blocks_created = 0
        self.blocks_reused = 0
        self.allocated_bytes = 0
        self.reserved_bytes = 0

    def empty(self, size, stride, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised pinned tensor of that layout, from the pool."""
        nbytes = extent(tuple(size), tuple(stride), 0, dtype.itemsize)[1]
        if nbytes == 0:
            return torch.empty_strided(tuple(size), tuple(stride), dtype=dtype, device="cpu")
        block = self._take(_size_class(nbytes))
        flat = torch.frombuffer(block.buffer, dtype=torch.uint8, count=nbytes, offset=block.offset)
        storage = flat.untyped_storage()
        t = torch.empty(0, dtype=dtype, device="cpu").set_(storage, 0, tuple(size), tuple(stride))
        self._live[block.address] = block
        self.allocated_bytes += block.size
        weakref.finalize(storage, self._release, block.address)
        return t

    def _take(self, size: int) -> HostBlock:
        pool = self._free.get(size, [])
        for i in range(len(pool) - 1, -1, -1):  # most recently freed first
            block = pool[i]
            if not block.pending or self._reusable(block.pending):
                block.pending = []
                self.blocks_reused += 1
                return pool.pop(i)
        self.blocks_created += 1
        self.reserved_bytes += size
        return HostBlock(size)

    def _give_back(self, block: HostBlock) -> None:
        self._free.setdefault(block.size, []).append(block)

    def _release(self, address: int) -> None:
        block = self._live.pop(address, None)
        if block is not None:
            self.allocated_bytes -= block.size
            block.pending = [item for item in block.pending if not self._completed(item)]
            self._give_back(block)

    def record_copy(self, t: torch.Tensor, stream_queue) -> None:
        """A non_blocking copy that reads or writes `t` was just queued on that stream: the
        block is not reused before it has completed (CachingHostAllocator_recordEvent).
        The item is kept; the scheduler drops its closure (and so the tensor) once it ran."""
        item = stream_queue.last
        block = self._block_of(t)
        if block is not None and item is not None:
            block.pending.append(item)

    def _block_of(self, t: torch.Tensor) -> HostBlock | None:
        try:
            ptr = t.untyped_storage().data_ptr()
        except Exception:
            return None
        return self._live.get(ptr)

    def forget_pending(self) -> None:
        """The device was synced (between tests): no freed block waits for a copy."""
        for block in [b for pool in self._free.values() for b in pool] + list(self._live.values()):
            block.pending = []

    def empty_cache(self) -> None:
        """torch._C._host_emptyCache: drop freed blocks no copy still uses."""
        for size, pool in self._free.items():
            keep = [b for b in pool if not all(self._completed(item) for item in b.pending)]
            self.reserved_bytes -= size * (len(pool) - len(keep))
            self._free[size] = keep


def host_allocator(vd) -> PinnedHostAllocator:
    """The device's pinned host allocator (made at first use)."""
    allocator = getattr(vd, "_host_allocator", None)
    if allocator is None:
        # The run's scheduler now, not the first one's: the allocator outlives runs.
        allocator = vd._host_allocator = PinnedHostAllocator(
            lambda item: vd.scheduler.completed(item), lambda items: vd.scheduler.reusable(items))
    return allocator


def upload_queued(vd, src: torch.Tensor, alloc, site: Site, op: str) -> None:
    """A non_blocking H2D copy from pinned `src` was just launched on the current stream:
    the block waits for it, and its source is compared with a snapshot when it runs."""
    allocator = host_allocator(vd)
    stream = vd.current_stream
    allocator.record_copy(src, stream.queue)
    item, block = stream.queue.last, allocator._block_of(src)
    if item is None or item.done or block is None or _busy(block, item):
        return  # it ran already, or another queued copy may change the bytes first
    read_set = tensor_set(src)
    if read_set[0] == read_set[1]:
        return
    snapshot = SourceSnapshot(block.address, *read_set, src.element_size())
    writes, agent, count, run = block.device_writes, stream.agent, item.op_count, item.run

    def checked():
        if block.device_writes == writes and not alloc.freed:  # else not the host's change
            changed = snapshot.changed()
            if changed is not None:
                race = unseen_write_race(vd.hb, alloc, agent, count, op, read_set, changed,
                                         site, Site.here(1, 40), "when the copy ran")
                if race is not None:
                    vd.hb.defer(race)  # raised at the host's next launch, access or sync
        run()

    item.run = checked


def download_queued(vd, dst: torch.Tensor) -> None:
    """A non_blocking D2H copy into pinned `dst` was just launched on the current stream:
    the block waits for it, and `dst` holds poison until it runs."""
    allocator = host_allocator(vd)
    stream = vd.current_stream
    allocator.record_copy(dst, stream.queue)
    item, block = stream.queue.last, allocator._block_of(dst)
    if item is None or block is None:
        return
    if item.done:
        block.device_writes += 1
        return
    run = item.run

    def counted():
        run()
        block.device_writes += 1

    item.run = counted
    if not _busy(block, item):
        start, stop, region = tensor_set(dst)
        for a, b in [(start, stop)] if region is None else region.runs():
            ctypes.memset(block.address + a, 0xFF, b - a)  # as sim/memory.py's poison_


def _busy(block: HostBlock, item) -> bool:
    """Whether a queued copy other than `item` still uses the block."""
    return any(not other.done for other in block.pending if other is not item)


def pinned_like(vd, value: torch.Tensor, site, copy: bool = True) -> torch.Tensor:
    """A pinned tensor from the pool with value's layout (contiguous if it is not dense)
    and, if copy, its contents; registered with the device as pinned memory."""
    stride = value.stride() if value.is_contiguous() else contiguous_strides(value.shape)
    out = host_allocator(vd).empty(tuple(value.shape), stride, value.dtype)
    if copy:
        with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
            out.copy_(value)
    return vd.register_pinned(out, site)

