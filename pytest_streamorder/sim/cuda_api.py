"""The rest of torch.cuda's surface on the virtual device, and where it is installed.

Most of torch.cuda is Python over `torch._C._cuda_*` entry points. Where an entry point
has a meaning for memory or ordering, the virtual device answers it (memory statistics
from the allocator model, empty_cache, synchronize, the sync debug mode), so torch's own
Python (memory_allocated, max_memory_reserved, memory_stats, memory_summary,
reset_peak_memory_stats, ...) runs unchanged on the model's numbers. CUDA generators,
nvtx ranges (harmless no-ops), the torch.cuda types, torch.Event / torch.Stream /
torch.accelerator get stand-ins. Everything else is refused by name (cuda_net.py).

`install(vd, saved)` is called by cuda_module.install after it patched torch.cuda
(`saved`: the originals it replaced) and returns the Patches to undo.
"""

from __future__ import annotations

import sys
import threading

import torch

from ..errors import NotModelledError
from . import accelerator, cuda_net, cuda_types, generators, gpu_identity, graphs, storage
from .memory_stats import memory_info
from .patching import Patches
from .pinned_allocator import host_allocator


class _Nvtx:
    """torch.cuda.nvtx's native half: ranges annotate a profile and order nothing."""

    def __init__(self):
        self._depth = threading.local()
        self._ids = iter(range(1, 1 << 62))

    def rangePushA(self, msg):
        depth = getattr(self._depth, "n", 0)
        self._depth.n = depth + 1
        return depth

    def rangePop(self):
        depth = getattr(self._depth, "n", 0) - 1
        if depth < 0:
            return -2  # NVTX: no open range on this thread
        self._depth.n = depth
        return depth

    def rangeStartA(self, msg):
        return next(self._ids)

    def rangeEnd(self, range_id):
        return None

    def markA(self, msg):
        return None

    def deviceRangeStart(self, msg, stream=0):
        return next(self._ids)

    def deviceRangeEnd(self, handle, stream=0):
        return None


def _device_index(device=None) -> int:
    if device is None or isinstance(device, int):
        index = device or 0
    else:
        dev = torch.device(device)
        if dev.type != "cuda":
            raise ValueError(f"expected a cuda device, got {device!r}")
        index = dev.index or 0
    if index not in (0, -1):
        raise ValueError(f"the virtual device has one GPU (cuda:0); got device {device!r}")
    return 0


def c_entry_points(vd) -> dict:
    """torch._C._cuda_* entry points the virtual device answers."""
    stats = vd.allocator.stats
    host = host_allocator(vd)

    def memory_stats(device=None):
        _device_index(device)
        return stats.nested()

    def set_sync_debug_mode(mode):
        if int(mode) != 0:
            name = {1: "warn", 2: "error"}.get(int(mode), mode)
            raise NotModelledError(f"torch.cuda.set_sync_debug_mode({name!r})",
                                   "only 'default' (0) is modelled")

    def host_stats():
        return {"allocated_bytes": {"current": host.allocated_bytes},
                "reserved_bytes": {"current": host.reserved_bytes},
                "num_host_alloc": host.blocks_created, "num_host_free": 0}

    def synchronize(*args):
        torch.cuda.synchronize()

    def capability_flags():
        major, minor = torch.cuda.get_device_capability()
        return f"sm_{major}{minor}"

    return {
        "_cuda_memoryStats": memory_stats,
        "_cuda_resetPeakMemoryStats": lambda device=None: (_device_index(device), stats.reset_peak())[1],
        "_cuda_resetAccumulatedMemoryStats": lambda device=None: (_device_index(device), stats.reset_accumulated())[1],
        "_cuda_emptyCache": lambda: vd.allocator.release_cached(),
        "_cuda_hostMemoryStats": host_stats,
        "_cuda_resetPeakHostMemoryStats": lambda: None,
        "_cuda_resetAccumulatedHostMemoryStats": lambda: None,
        "_host_emptyCache": lambda: host.empty_cache(),
        "_cuda_getAllocatorBackend": lambda: "native",
        "_cuda_get_sync_debug_mode": lambda: 0,
        "_cuda_set_sync_debug_mode": set_sync_debug_mode,
        "_cuda_synchronize": synchronize,
        "_cuda_init": lambda: None,
        "_cuda_isInBadFork": lambda: False,
        "_cuda_getArchFlags": capability_flags,
        "_cuda_getDeviceCount": lambda: gpu_identity.DEVICE_COUNT,
        "_cuda_getDevice": lambda: 0,
        "_cuda_setDevice": _device_index,
        "_cuda_exchangeDevice": lambda device: (_device_index(device), 0)[1],
        "_cuda_maybeExchangeDevice": lambda device: (_device_index(device), 0)[1],
        "_cuda_isCurrentStreamCapturing": vd.graphs.is_capturing,
    }


def python_replacements(vd) -> dict:
    """torch.cuda attributes replaced outright (the C entry points cannot carry them)."""

    def mem_get_info(device=None):
        _device_index(device)
        return memory_info(vd.allocator.stats)

    def ipc_collect():
        return None  # nothing is shared with another process: nothing to collect

    table = {
        "mem_get_info": mem_get_info,
        "default_generators": (generators.default_generator(vd),),
        "device": cuda_types.device,
        "device_of": cuda_types.device_of,
        "is_current_stream_capturing": graphs.is_current_stream_capturing,
        "ipc_collect": ipc_collect,
    }
    table.update(cuda_types.legacy_types())
    return table


def _cuda_modules() -> list:
    """torch.cuda and its loaded submodules: they bind many of torch.cuda's functions at
    import (`from . import is_initialized`), so a stand-in must be set in each of them."""
    return [m for name, m in list(sys.modules.items())
            if m is not None and (name == "torch.cuda" or name.startswith("torch.cuda."))]


def install(vd, saved: dict) -> Patches:
    patches = Patches()
    try:
        modules = _cuda_modules()
        # torch.cuda's own replacements (cuda_module.py) reach the submodules too
        for name, original in saved.items():
            patches.set_everywhere(modules, name, original, getattr(torch.cuda, name))
        c_table = {**c_entry_points(vd), **accelerator.c_entry_points(vd)}
        for name, value in c_table.items():
            patches.set(torch._C, name, value)
        for name, value in python_replacements(vd).items():
            original = getattr(torch.cuda, name, None)
            patches.set(torch.cuda, name, value)
            if original is not None:
                patches.set_everywhere(modules, name, original, value)
        patches.set(torch.cuda.nvtx, "_nvtx", _Nvtx())
        storage.install(patches)
        patches.set(torch, "Generator", generators.Generator)
        patches.set(torch, "Event", accelerator.Event)
        patches.set(torch, "Stream", accelerator.Stream)
        modelled = {n for n in saved if not cuda_net.is_refused(getattr(torch.cuda, n))}
        cuda_net.install(patches, modules, modelled | set(python_replacements_names()),
                         set(c_table))
    except BaseException:
        patches.undo()
        raise
    return patches


def python_replacements_names() -> tuple:
    return ("mem_get_info", "default_generators", "device", "device_of",
            "is_current_stream_capturing", "ipc_collect", *cuda_types.LEGACY_DTYPES)
