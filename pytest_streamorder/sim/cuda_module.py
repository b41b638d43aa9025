"""The torch.cuda stand-in: which attributes of the torch.cuda module the virtual device
replaces while it is active, and restoring them exactly afterwards.

`torch.get_device_module("cuda")` returns the torch.cuda module itself, so code that
goes through it sees these too. Names a program imported before the context started
(`from torch.cuda import Stream`) keep pointing at the originals.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch

from ..errors import NotModelledError
from ..host_threads import locked
from ..model import Site
from .streams import VirtualEvent, VirtualStream
from .threads import ensure_thread_mode

_MISSING = object()

DEVICE_NAME = "Virtual CUDA device (pytest-streamorder)"

# CUDA APIs we do not model: using one inside the context fails loudly, by name.
UNSUPPORTED = (
    "CUDAGraph", "graph", "make_graphed_callables", "graph_pool_handle", "ExternalStream",
    "caching_allocator_alloc", "caching_allocator_delete", "memory_allocated",
    "max_memory_allocated", "memory_reserved", "max_memory_reserved", "memory_stats",
    "mem_get_info", "set_per_process_memory_fraction", "get_rng_state", "set_rng_state",
    "get_rng_state_all", "set_rng_state_all", "ipc_collect", "set_sync_debug_mode",
    "jiterator",
)


def _unsupported(name: str):
    def fail(*args, **kwargs):
        raise NotModelledError(f"torch.cuda.{name}", "run this test with "
                               "@pytest.mark.no_streamorder or on a real GPU")
    fail.__name__ = name
    return fail


def _device_index(device) -> int:
    if device is None:
        return 0
    if isinstance(device, int):
        index = device
    else:
        dev = torch.device(device)
        if dev.type != "cuda":
            raise ValueError(f"expected a cuda device, got {device!r}")
        index = dev.index or 0
    if index != 0:
        raise ValueError(f"the virtual device has one GPU (cuda:0); got device {device!r}")
    return 0


def _replacements(vd) -> dict:
    # The current stream is the calling thread's (vd.current_stream is per thread).
    def current_stream(device=None):
        _device_index(device)
        return vd.current_stream

    def default_stream(device=None):
        _device_index(device)
        return vd.default_stream

    def set_stream(stream):
        if not isinstance(stream, VirtualStream):
            raise TypeError(f"torch.cuda.set_stream expects a torch.cuda.Stream, got {stream!r}")
        ensure_thread_mode()  # a thread that predates the device is about to do device work
        vd.current_stream = stream

    @contextlib.contextmanager
    def stream(s):
        if s is None:
            yield
            return
        if not isinstance(s, VirtualStream):
            raise TypeError(f"torch.cuda.stream expects a torch.cuda.Stream, got {s!r}")
        ensure_thread_mode()
        prev = vd.current_stream
        vd.current_stream = s
        try:
            yield
        finally:
            vd.current_stream = prev

    @locked
    def synchronize(device=None):
        _device_index(device)
        vd.sync_device()

    @locked
    def _sleep(cycles):
        vd.sleep(int(cycles), Site.here(1))

    @contextlib.contextmanager
    def device(d):
        _device_index(d)
        yield

    def get_device_properties(device=None):
        _device_index(device)
        return SimpleNamespace(name=DEVICE_NAME, major=9, minor=0, total_memory=80 * 2**30,
                               multi_processor_count=132, is_integrated=False)

    def noop():
        # A distinct function per name: torch._dynamo indexes torch.cuda's functions.
        def nothing(*args, **kwargs):
            return None
        return nothing

    table = {
        "is_available": lambda: True,
        "is_initialized": lambda: True,
        "_lazy_init": noop(),
        "init": noop(),
        "device_count": lambda: 1,
        "current_device": lambda: 0,
        "set_device": _device_index,
        "get_device_name": lambda device=None: (_device_index(device), DEVICE_NAME)[1],
        "get_device_capability": lambda device=None: (_device_index(device), (9, 0))[1],
        "get_device_properties": get_device_properties,
        "is_bf16_supported": lambda *a, **k: True,
        "device": device,
        "Stream": VirtualStream,
        "Event": VirtualEvent,
        "stream": stream,
        "current_stream": current_stream,
        "default_stream": default_stream,
        "set_stream": set_stream,
        "synchronize": synchronize,
        "_sleep": _sleep,
        # Random ops draw from the CPU generator when issued; seeding it is the user's.
        "manual_seed": noop(),
        "manual_seed_all": noop(),
        "seed": noop(),
        "seed_all": noop(),
        "empty_cache": noop(),
    }
    for name in UNSUPPORTED:
        table[name] = _unsupported(name)
    return table


def install(vd) -> dict:
    """Patch torch.cuda; returns what to restore."""
    import torch._dynamo  # noqa: F401  (it indexes torch.cuda on import: not while patched)

    saved = {}
    for name, value in _replacements(vd).items():
        saved[name] = getattr(torch.cuda, name, _MISSING)
        setattr(torch.cuda, name, value)
    return saved


def uninstall(saved: dict) -> None:
    for name, value in saved.items():
        if value is _MISSING:
            delattr(torch.cuda, name)
        else:
            setattr(torch.cuda, name, value)
