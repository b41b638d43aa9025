"""Device memory of the virtual device: a model of PyTorch's CUDA caching allocator.

Like the real one, a freed block goes back to the pool of the stream it was allocated
on and is handed to the next allocation of the same size on that stream *at once*,
even if another stream's queued work still uses it; `record_stream` holds the block
back until the work queued on the recorded streams at free time has completed, in
virtual time, as the host sees it (CUDA's allocator queries an event recorded at free
time): work that ran early but whose finish lies after the host's clock still holds it. The bytes of
a block are a CPU buffer that queued ops read and write when they run, so a missing
`record_stream` corrupts data here exactly as on a GPU. Fresh blocks hold poison, not
zeros.

CUDA graphs' private pools (GraphPool): while a stream captures into a pool, what is
allocated on it comes from that pool, as in PyTorch. A pool's blocks are never handed to
ordinary allocations; one freed in it (a capture's temporary, or an output the user
dropped) goes to the next capture into the same pool, so graphs sharing a pool share
memory, and their outputs may alias. Each pool block has ONE model allocation for its whole
life, reserved while the pool lives: the recorded accesses of every graph that used it
stay valid for their replays, and replays of two graphs touching the same block conflict
unless ordered (PyTorch: share a pool only among graphs replayed in capture order).
"""

from __future__ import annotations

import torch

from ..host_threads import locked
from ..model import Site
from .memory_stats import MemoryStats

BLOCK_BYTES = 512  # CUDA's allocator rounds sizes up to 512 bytes


def round_up(nbytes: int) -> int:
    return -(-nbytes // BLOCK_BYTES) * BLOCK_BYTES


def poison_(buf: torch.Tensor) -> None:
    """Fill fresh memory with a value no correct program reads: 0xFF bytes (NaN for
    floating types, -1 for signed integers; real uninitialised memory is arbitrary)."""
    buf.fill_(0xFF)


class Block:
    """Bytes of device memory, with a fake device address."""

    __slots__ = ("address", "nbytes", "data", "agent", "pending", "typed", "views", "pool",
                 "alloc")

    def __init__(self, address: int, nbytes: int, agent):
        self.address = address
        self.nbytes = nbytes
        # Never an inference tensor, even when allocated under torch.inference_mode():
        # the block outlives that block of code and is written (ops run late, the
        # session restores memory) outside it.
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False):
                self.data = torch.empty(nbytes, dtype=torch.uint8, device="cpu")
        else:  # (entering the context costs more than the allocation)
            # device="cpu": also under a user's `with torch.device("cuda")`
            self.data = torch.empty(nbytes, dtype=torch.uint8, device="cpu")
        poison_(self.data)
        # The model agent of the stream it was allocated on, whose pool it goes back to
        # (not the stream object: a cached block must not keep a dropped stream alive).
        self.agent = agent
        self.pending: list = []  # scheduler items that must complete before reuse
        self.typed: dict = {}  # dtype -> the bytes seen as a flat tensor of that dtype
        self.views: dict = {}  # (dtype, layout, inference mode) -> a CPU view (issue.Ref)
        self.pool: "GraphPool | None" = None  # set for a CUDA graph pool's block
        self.alloc = None  # a pool block's model allocation, for its whole life


class VirtualStorage:
    """One allocation: what device tensors (and their views) share. When the last tensor
    referring to it is gone, the block is freed, as with a real CUDA tensor's storage."""

    __slots__ = ("block", "alloc", "nbytes", "recorded_streams", "allocator")

    def __init__(self, block: Block, alloc, nbytes: int,
                 allocator: "CachingAllocator | None" = None):
        self.block = block
        self.alloc = alloc
        self.nbytes = nbytes
        self.recorded_streams: set = set()
        self.allocator = allocator  # None: nothing to give back (zero bytes)

    def __del__(self):
        if self.allocator is not None:
            self.allocator.free(self.block, self.alloc, self.recorded_streams)

    def typed(self, dtype: torch.dtype) -> torch.Tensor:
        """The block's bytes seen as a flat tensor of dtype."""
        itemsize = dtype.itemsize
        return self.block.data[: (self.block.nbytes // itemsize) * itemsize].view(dtype)


class CachingAllocator:
    """Per-stream pools of freed blocks, keyed by rounded size."""

    def __init__(self, device):
        self.device = device
        self._pools: dict[tuple, list[Block]] = {}  # (stream's agent, size) -> blocks
        self._next_address = 0x7F00_0000_0000
        self.blocks_created = 0
        self.blocks_reused = 0
        self.stats = MemoryStats()  # torch.cuda.memory_stats() reads these

    def allocate(self, nbytes: int, label, site: Site) -> VirtualStorage:
        stream = self.device.current_stream
        graphs = getattr(self.device, "graphs", None)
        pool = graphs.pool_for(stream) if graphs is not None and graphs.captures else None
        if pool is not None and nbytes:
            return self._allocate_in_pool(pool, stream, nbytes, label, site)
        if nbytes == 0:  # like CUDA's allocator: no block at all for zero bytes
            alloc = self.device.hb.allocate(0, label, site, stream=stream.agent)
            return VirtualStorage(Block(0, 0, stream.agent), alloc, 0)
        size = round_up(nbytes)
        block = self._take(stream.agent, size)
        if block is None:
            block = Block(self._next_address, size, stream.agent)
            self._next_address += size
            self.blocks_created += 1
            self.stats.reserved(size)
        else:
            self.blocks_reused += 1
        self.stats.allocated(size, nbytes)
        alloc = self.device.hb.allocate(max(nbytes, 0), label, site, stream=stream.agent,
                                        space="device", address=block.address)
        return VirtualStorage(block, alloc, nbytes, self)

    def _allocate_in_pool(self, pool: "GraphPool", stream, nbytes: int, label,
                          site: Site) -> VirtualStorage:
        size = round_up(nbytes)
        free = pool.free.get((stream.agent, size))
        if free:
            block = free.pop()  # the capture that reuses it is ordered by the model
            self.blocks_reused += 1
            block.alloc.label = label  # reports name the latest tensor in the block
        else:
            block = Block(self._next_address, size, stream.agent)
            self._next_address += size
            self.blocks_created += 1
            self.stats.reserved(size)
            block.pool = pool
            block.alloc = self.device.hb.allocate(size, label, site, stream=stream.agent,
                                                  space="device", address=block.address)
            pool.blocks.append(block)
        self.stats.allocated(size, size)  # its free cannot tell the size asked for
        return VirtualStorage(block, block.alloc, nbytes, self)

    def release_pool(self, pool: "GraphPool") -> None:
        """No graph uses the pool any more: its free blocks go (cudaFree); blocks still
        held by tensors go when those are freed. Their addresses are never handed out
        again, so no access of a replay can meet a later owner."""
        for blocks in pool.free.values():
            for block in blocks:
                self._drop_pool_block(block)
        pool.free.clear()

    def _drop_pool_block(self, block: Block) -> None:
        self.device.hb.free(block.alloc, Site.here(3))
        block.pool.blocks.remove(block)
        self._release(block)

    def _release(self, block: Block) -> None:
        """cudaFree of a freed block: its bytes and address are gone for good (addresses
        are never handed out twice), so the device and the model forget it."""
        self.stats.released(block.nbytes)
        self.device.forget_block(block)

    def release_stream(self, agent) -> None:
        """The stream is gone and the host is ordered after its work (hb.retire): no
        allocation can take the blocks cached in its pools any more (CUDA hands a block
        only to its own stream), so they are released instead of cached for ever; so is
        each block of it freed later."""
        for key in [key for key in self._pools if key[0] is agent]:
            for block in self._pools.pop(key):
                self._release(block)

    def _take(self, agent, size: int) -> Block | None:
        pool = self._pools.get((agent, size))
        if not pool:
            return None
        reusable = self.device.scheduler.reusable  # an observation when work holds it
        for i in range(len(pool) - 1, -1, -1):  # most recently freed first, like CUDA
            block = pool[i]
            if not block.pending or reusable(block.pending):
                block.pending = []
                return pool.pop(i)
        return None

    @locked  # __del__ runs in whichever thread dropped the last reference
    def free(self, block: Block, alloc, recorded: set) -> None:
        """The last tensor using the storage is gone (called from its __del__)."""
        device = self.device
        if not device.active:
            return  # the device was torn down; its memory goes with it
        if block.pool is not None:  # back to its graph pool; its model allocation stays
            self.stats.freed(block.nbytes, alloc.nbytes)
            if block.pool.users:
                block.pool.free.setdefault((block.agent, block.nbytes), []).append(block)
            else:
                self._drop_pool_block(block)
            return
        device.hb.free(alloc, Site.here(3))  # above @locked and __del__: the user
        self.stats.freed(block.nbytes, alloc.nbytes)
        if block.agent.retired:  # its stream's pools are gone (release_stream)
            self._release(block)
            return
        # record_stream: hold the block until the work queued on those streams so far has
        # completed (the latest item of each, whether it has run or not).
        block.pending = [s.queue.last for s in recorded if s.queue.last is not None]
        self._pools.setdefault((block.agent, block.nbytes), []).append(block)

    def forget_pending(self) -> None:
        """The device was synced (between tests): no cached block waits for any work."""
        for pool in self._pools.values():
            for block in pool:
                block.pending = []

    def release_cached(self) -> None:
        """torch.cuda.empty_cache: give back the cached blocks no queued work still holds
        (CUDA waits for record_stream'd blocks' events first; here they stay cached)."""
        completed = self.device.scheduler.completed
        for key, pool in list(self._pools.items()):
            keep = [b for b in pool if not all(completed(item) for item in b.pending)]
            for block in pool:
                if block not in keep:
                    self._release(block)
            self._pools[key] = keep


class GraphPool:
    """A private memory pool of CUDA graphs: `torch.cuda.graph_pool_handle()`, or the one
    a graph captured without `pool=` gets (`CUDAGraph.pool()`)."""

    __slots__ = ("handle", "users", "free", "blocks")

    def __init__(self, handle: tuple):
        self.handle = handle
        self.users = 0  # graphs captured (or capturing) into it and not reset
        self.free: dict[tuple, list[Block]] = {}  # (stream's agent, size) -> blocks
        self.blocks: list[Block] = []  # all its blocks, free or in use
