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
"""

from __future__ import annotations

import weakref

import torch

from ..ops.ranges import contiguous_strides, extent

ALIGN = 64
MIN_BLOCK = 512


def _size_class(nbytes: int) -> int:
    size = MIN_BLOCK
    while size < nbytes:
        size *= 2
    return size


class HostBlock:
    __slots__ = ("buffer", "offset", "size", "address", "pending", "__weakref__")

    def __init__(self, size: int):
        self.buffer = bytearray(size + ALIGN)
        probe = torch.frombuffer(self.buffer, dtype=torch.uint8)
        self.offset = -probe.data_ptr() % ALIGN
        self.address = probe.data_ptr() + self.offset
        self.size = size
        self.pending: list = []  # the queued copies (scheduler items) that use the block


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
            return torch.empty_strided(tuple(size), tuple(stride), dtype=dtype)
        block = self._take(_size_class(nbytes))
        flat = torch.frombuffer(block.buffer, dtype=torch.uint8, count=nbytes, offset=block.offset)
        storage = flat.untyped_storage()
        t = torch.empty(0, dtype=dtype).set_(storage, 0, tuple(size), tuple(stride))
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


def pinned_like(vd, value: torch.Tensor, site, copy: bool = True) -> torch.Tensor:
    """A pinned tensor from the pool with value's layout (contiguous if it is not dense)
    and, if copy, its contents; registered with the device as pinned memory."""
    stride = value.stride() if value.is_contiguous() else contiguous_strides(value.shape)
    out = host_allocator(vd).empty(tuple(value.shape), stride, value.dtype)
    if copy:
        with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
            out.copy_(value)
    return vd.register_pinned(out, site)

