"""The generic device API on the virtual device: torch.Event, torch.Stream and
torch.accelerator.

torch.accelerator's Python functions call `torch._C._accelerator_*`; those entry points
are replaced here, so torch's own functions (is_available, current_accelerator,
current_stream, set_stream, synchronize, device_index, memory_stats, ...) run unchanged
and see the virtual GPU. torch.Event() and torch.Stream() with a cuda device (or none: the
current accelerator is cuda) give the virtual device's events and streams; with a cpu
device, torch's own.
"""

from __future__ import annotations

import torch

from ..errors import NotModelledError
from .memory_stats import memory_info
from .streams import VirtualEvent, VirtualStream

CUDA = torch.device("cuda")
_OriginalEvent = torch.Event
_OriginalStream = torch.Stream


def _is_cuda(device) -> bool:
    if device is None:
        return True  # the current accelerator
    dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    return dev.type == "cuda"


class _DelegatingType(type):
    """isinstance/issubclass checks against the stand-in ask the original type."""

    def __instancecheck__(cls, obj):
        return isinstance(obj, (cls._original, VirtualEvent, VirtualStream))

    def __subclasscheck__(cls, sub):
        return issubclass(sub, cls._original)


class Event(metaclass=_DelegatingType):
    """What torch.Event is while the virtual device is active."""

    _original = _OriginalEvent

    def __new__(cls, device=None, *, enable_timing=False, blocking=False, interprocess=False):
        if _is_cuda(device):
            return VirtualEvent(enable_timing=enable_timing, blocking=blocking,
                                interprocess=interprocess)
        return _OriginalEvent(device, enable_timing=enable_timing, blocking=blocking,
                              interprocess=interprocess)


class Stream(metaclass=_DelegatingType):
    """What torch.Stream is while the virtual device is active."""

    _original = _OriginalStream

    def __new__(cls, device=None, *, priority=0, **kwargs):
        if kwargs:  # stream_id=/device_index=/device_type=: a handle made elsewhere
            raise NotModelledError(f"torch.Stream({', '.join(kwargs)}=...)",
                                   "only new streams are modelled")
        if _is_cuda(device):
            return VirtualStream(priority=priority)
        return _OriginalStream(device, priority=priority)


def _index(device_index) -> int:
    if device_index is None or device_index == -1:
        return 0
    if int(device_index) != 0:
        raise ValueError(f"the virtual device has one GPU (cuda:0); got device index {device_index}")
    return 0


def c_entry_points(vd) -> dict:
    """torch._C._accelerator_* (and _get_accelerator) as the virtual device answers them."""
    stats = vd.allocator.stats

    def get_stream(device_index=None):
        _index(device_index)
        return torch.cuda.current_stream()  # per thread, as torch.cuda says

    def set_stream(stream):
        torch.cuda.set_stream(stream)

    def synchronize(device_index=None):
        _index(device_index)
        torch.cuda.synchronize()

    def device_stats(device_index=None):
        _index(device_index)
        return stats.nested()

    def exchange(device_index):
        _index(device_index)
        return 0

    return {
        "_get_accelerator": lambda *a: CUDA,
        "_accelerator_getAccelerator": lambda: CUDA,
        "_accelerator_getDeviceIndex": lambda: 0,
        "_accelerator_setDeviceIndex": _index,
        "_accelerator_exchangeDevice": exchange,
        "_accelerator_maybeExchangeDevice": exchange,
        "_accelerator_hooks_device_count": lambda: 1,
        "_accelerator_hooks_get_current_device": lambda: 0,
        "_accelerator_hooks_set_current_device": _index,
        "_accelerator_hooks_exchange_device": exchange,
        "_accelerator_hooks_maybe_exchange_device": exchange,
        "_accelerator_getStream": get_stream,
        "_accelerator_setStream": set_stream,
        "_accelerator_synchronizeDevice": synchronize,
        "_accelerator_isAllocatorInitialized": lambda: True,
        "_accelerator_getDeviceStats": device_stats,
        "_accelerator_resetPeakStats": lambda device_index=None: stats.reset_peak(),
        "_accelerator_resetAccumulatedStats": lambda device_index=None: stats.reset_accumulated(),
        "_accelerator_emptyCache": lambda: vd.allocator.release_cached(),
        "_accelerator_getMemoryInfo": lambda device_index=None: memory_info(stats),
    }
