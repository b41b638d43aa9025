"""The caching allocator's statistics, as torch.cuda.memory_stats() reports them.

The allocator model (memory.py) calls `allocated`, `freed`, `reserved` and `released`;
`nested()` answers torch._C._cuda_memoryStats, so torch's own Python read-outs
(memory_allocated, max_memory_reserved, memory_stats()["allocated_bytes.all.current"],
memory_summary, ...) run unchanged on these numbers.

Differences from CUDA, on purpose: a segment is one block (CUDA carves small blocks out of
2 MiB segments and large ones out of 20 MiB segments), so memory_reserved() is the sum of
the blocks the model created and not yet released; nothing is ever split, so the
inactive-split counters stay 0; allocated bytes are rounded to 512 bytes as in CUDA.
"""

from __future__ import annotations

from .gpu_identity import TOTAL_MEMORY

SMALL_SIZE = 1 << 20  # CUDA's allocator: blocks up to 1 MiB come from the small pool
COUNTERS = ("allocation", "segment", "active", "inactive_split", "allocated_bytes",
            "reserved_bytes", "active_bytes", "inactive_split_bytes", "requested_bytes")
POOLS = ("all", "small_pool", "large_pool")
# What allocated()/freed() move; "active*" report the same numbers as "allocation" and
# "allocated_bytes" (nothing is ever split, so every allocated block is active).
_PER_ALLOC = ("allocation", "allocated_bytes", "requested_bytes")
_MIRRORS = {"active": "allocation", "active_bytes": "allocated_bytes"}


class Stat:
    __slots__ = ("current", "peak", "allocated", "freed")

    def __init__(self):
        self.current = self.peak = self.allocated = self.freed = 0

    def add(self, n: int) -> None:
        self.current += n
        self.allocated += n
        self.peak = max(self.peak, self.current)

    def sub(self, n: int) -> None:
        self.current -= n
        self.freed += n

    def as_dict(self) -> dict:
        return {"current": self.current, "peak": self.peak, "allocated": self.allocated,
                "freed": self.freed}


class MemoryStats:
    def __init__(self):
        own = {c: {p: Stat() for p in POOLS} for c in COUNTERS if c not in _MIRRORS}
        self._stats = {c: own[_MIRRORS.get(c, c)] for c in COUNTERS}  # in torch's order
        # (count, bytes, requested) of "all", then of the block's pool: the six Stats one
        # allocation moves, looked up once per pool.
        self._small = tuple(self._stats[c][p] for p in ("all", "small_pool") for c in _PER_ALLOC)
        self._large = tuple(self._stats[c][p] for p in ("all", "large_pool") for c in _PER_ALLOC)
        self.num_device_alloc = 0
        self.num_device_free = 0

    def _change(self, counter: str, size: int, n: int) -> None:
        pool = "small_pool" if size <= SMALL_SIZE else "large_pool"
        for p in ("all", pool):
            stat = self._stats[counter][p]
            stat.add(n) if n >= 0 else stat.sub(-n)

    # --- what the allocator model reports -------------------------------------------

    # allocated/freed run for every device tensor: the six Stats they move (count, bytes,
    # requested bytes; of "all" and of the block's pool) are looked up once per pool.

    def allocated(self, block_bytes: int, requested: int) -> None:
        stats = self._small if block_bytes <= SMALL_SIZE else self._large
        for stat, n in zip(stats, (1, block_bytes, requested, 1, block_bytes, requested)):
            stat.allocated += n
            current = stat.current = stat.current + n
            if current > stat.peak:
                stat.peak = current

    def freed(self, block_bytes: int, requested: int) -> None:
        stats = self._small if block_bytes <= SMALL_SIZE else self._large
        for stat, n in zip(stats, (1, block_bytes, requested, 1, block_bytes, requested)):
            stat.current -= n
            stat.freed += n

    def reserved(self, block_bytes: int) -> None:
        self.num_device_alloc += 1
        self._change("segment", block_bytes, 1)
        self._change("reserved_bytes", block_bytes, block_bytes)

    def released(self, block_bytes: int) -> None:
        self.num_device_free += 1
        self._change("segment", block_bytes, -1)
        self._change("reserved_bytes", block_bytes, -block_bytes)

    # --- what torch reads --------------------------------------------------------------

    def reset_peak(self) -> None:
        for pools in self._stats.values():  # (a mirror resets its source again: harmless)
            for stat in pools.values():
                stat.peak = stat.current

    def reset_accumulated(self) -> None:
        for pools in self._stats.values():  # (likewise)
            for stat in pools.values():
                stat.allocated = stat.freed = 0
        self.num_device_alloc = self.num_device_free = 0

    def nested(self) -> dict:
        """The shape of torch._C._cuda_memoryStats(device)."""
        out: dict = {c: {p: s.as_dict() for p, s in pools.items()} for c, pools in self._stats.items()}
        out.update(num_alloc_retries=0, num_ooms=0, num_sync_all_streams=0,
                   num_device_alloc=self.num_device_alloc, num_device_free=self.num_device_free,
                   max_split_size=-1,
                   oversize_allocations={"current": 0, "peak": 0, "allocated": 0, "freed": 0},
                   oversize_segments={"current": 0, "peak": 0, "allocated": 0, "freed": 0})
        return out

    @property
    def reserved_bytes(self) -> int:
        return self._stats["reserved_bytes"]["all"].current


def memory_info(stats: MemoryStats) -> tuple[int, int]:
    """(free, total) device bytes, as cudaMemGetInfo: total is the virtual GPU's; free
    excludes what the caching allocator holds (reserved)."""
    return (TOTAL_MEMORY - stats.reserved_bytes, TOTAL_MEMORY)
