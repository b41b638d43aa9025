"""The torch.cuda stand-in: which attributes of the torch.cuda module the virtual device
replaces while it is active, and restoring them exactly afterwards.

`torch.get_device_module("cuda")` returns the torch.cuda module itself, so code that
goes through it sees these too. Names a program imported before the context started
(`from torch.cuda import Stream`) keep pointing at the originals.
"""

from __future__ import annotations

import contextlib

import torch

from ..host_threads import locked
from ..model import Site
from .cuda_api import install as install_api
from .. import compiled
from . import cuda_guard, cuda_key, distributed, lazy_dynamo
from .cuda_net import refuse
from . import graphs
from .streams import VirtualEvent, VirtualStream
from .threads import ensure_thread_mode

_MISSING = object()
_API = object()  # the key of cuda_api's patches in what install() returns
_SWAP = object()  # the key of torch.__future__'s module-conversion flag
_NVML = object()  # the key of the virtual NVML's patches
_KEY = object()  # the key of the CUDA dispatch key's fallback (cuda_key.py)
_COMPILE = object()  # the key of torch.compile's patches (compiled.py)
_DIST = object()  # the key of torch.distributed's NCCL stand-in (distributed.py)

from .gpu_identity import DEFAULT_GPU
from .runtime import set_guard_missing
from .nvml import VirtualNVML

# CUDA APIs refused with a hint of their own. Every other torch.cuda API that is not
# modelled is refused by the computed net (cuda_net.py); what is modelled is listed in
# this file's table, cuda_api.python_replacements and cuda_net.MODELLED_ORIGINALS.
UNSUPPORTED = {
    "make_graphed_callables": "it captures autograd's backward into graphs; capture with "
                              "torch.cuda.graph(...) instead",
    "ExternalStream": "a stream made outside torch has no place in the model",
    "caching_allocator_alloc": "raw allocations are not modelled",
    "caching_allocator_delete": "raw allocations are not modelled",
    "set_per_process_memory_fraction": "the virtual device never runs out of memory",
    "jiterator": "jiterator kernels are not modelled",
}


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
        vd.graphs.forbid("torch.cuda.synchronize()", device=True)
        vd.sync_device()

    @locked
    def _sleep(cycles):
        vd.sleep(int(cycles), Site.here(1))

    gpu = getattr(vd, "gpu", DEFAULT_GPU)

    def get_device_properties(device=None):
        _device_index(device)
        return gpu.properties()

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
        "set_device": lambda device: (_device_index(device), None)[1],
        "get_device_name": lambda device=None: (_device_index(device), gpu.name)[1],
        "get_device_capability": lambda device=None: (_device_index(device),
                                                      (gpu.major, gpu.minor))[1],
        "get_device_properties": get_device_properties,
        "is_bf16_supported": lambda *a, **k: gpu.major >= 8,
        "Stream": VirtualStream,
        "Event": VirtualEvent,
        "stream": stream,
        "current_stream": current_stream,
        "default_stream": default_stream,
        "set_stream": set_stream,
        "synchronize": synchronize,
        "_sleep": _sleep,
        "CUDAGraph": graphs.VirtualCUDAGraph,
        "graph": graphs.graph,
        "graph_pool_handle": graphs.graph_pool_handle,
    }
    for name, hint in UNSUPPORTED.items():
        table[name] = refuse(f"torch.cuda.{name}", getattr(torch.cuda, name, None), hint)
    return table


def install(vd) -> dict:
    """Patch torch.cuda; returns what to restore."""
    # Autograd's C++ opens a CUDA device guard for a module whose parameters require
    # grad: without the native guard a plain virtual_device() block would abort there.
    # (A session built it already, before it changed torch.version.cuda.)
    reason = cuda_guard.install()
    if reason:
        set_guard_missing(reason)

    saved = {}
    for name, value in _replacements(vd).items():
        saved[name] = getattr(torch.cuda, name, _MISSING)
        setattr(torch.cuda, name, value)
    try:  # the rest of the API surface, and the net under it
        saved[_API] = install_api(vd, {k: v for k, v in saved.items() if v is not _MISSING})
    except BaseException:
        uninstall(saved)
        raise
    # nn.Module.to("cuda") / .cuda(): with swapping, a module's parameters and buffers
    # become the device tensors themselves (Parameter(data) of a tensor subclass keeps
    # the subclass); otherwise `param.data = ...` leaves a CUDA-keyed tensor that is
    # neither the host's nor ours, and the forward fails with a raw error.
    saved[_SWAP] = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    saved[_NVML] = VirtualNVML(getattr(vd, "gpu", DEFAULT_GPU)).install()
    saved[_KEY] = cuda_key.install()  # factories that C++ composites make by device
    saved[_COMPILE] = compiled.install()  # compiled functions run eagerly
    saved[_DIST] = distributed.install()  # an NCCL process group: refused by name
    # torch._dynamo copies torch.cuda into tables when imported: not up front (1-3 s),
    # and, if something imports it now, with the originals in place (lazy_dynamo.py).
    lazy_dynamo.install(lambda: _entries(saved))
    return saved


def _entries(saved: dict) -> list:
    """(owner, name, original) of every torch.cuda patch in `saved`, in the order made."""
    entries = [(torch.cuda, name, value) for name, value in saved.items() if isinstance(name, str)]
    api = saved.get(_API)
    return entries + (api.entries() if api is not None else [])


def uninstall(saved: dict) -> None:
    lazy_dynamo.uninstall()
    undo = saved.pop(_DIST, None)
    if undo is not None:
        undo()
    undo = saved.pop(_COMPILE, None)
    if undo is not None:
        undo()
    key = saved.pop(_KEY, None)
    if key is not None:
        cuda_key.uninstall(key)
    nvml = saved.pop(_NVML, None)
    if nvml is not None:
        nvml.undo()
    swap = saved.pop(_SWAP, None)
    if swap is not None:
        torch.__future__.set_swap_module_params_on_conversion(swap)
    api = saved.pop(_API, None)
    if api is not None:
        api.undo()
    for name, value in saved.items():
        if value is _MISSING:
            delattr(torch.cuda, name)
        else:
            setattr(torch.cuda, name, value)
