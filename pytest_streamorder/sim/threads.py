"""Host threads on the virtual device.

Device tensors reach the device from any thread through their own __torch_function__,
and the patched entry points (entry_points.py) are global. What is per thread is the
function mode that host-only calls need (pinned memory): the thread that enters
`virtual_device()` pushes its FunctionMode only while needed (interception.arm: pinned
memory registered, or the owner started a thread or submitted pool work, so that
memory a worker pins is watched when the owner reads it). torch's mode stack is per
thread, so every other thread gets, once, a `ThreadMode` that follows whichever virtual
device is active (none: it lets every call through; in the thread that entered the
device, whose own mode handles the calls, it lets them through too). It is pushed

- when a thread starts while the device is active, and before every ThreadPoolExecutor
  task, also in workers started before the device (host_threads.py wraps both);
- for any other thread that predates the device, at the first call of it that reaches
  the device without the mode: an aten op on a device tensor (DeviceTensor dispatches
  from any thread), a stream or event of the device, torch.cuda.set_stream/stream().

A thread that predates the device, outside a thread pool, and was not started by the
owner while attached has no ThreadMode until its first device call: its host accesses
to pinned memory before that are not seen (its device calls are: __torch_function__
and the entry points do not depend on the mode).
"""

from __future__ import annotations

import threading

from .. import host_threads
from .runtime import current

_local = threading.local()  # .mode: the ThreadMode pushed in this thread, if any
_owner: int | None = None  # the thread that entered the active device (it has its own mode)
_make_mode = None  # the ThreadMode class (interception.py hands it over: no import cycle)


def start(make_mode, on_spawn=None) -> None:
    """The calling thread has entered a virtual device: set up every other thread.
    `on_spawn()` runs in a thread that starts a thread or submits pool work."""
    global _owner, _make_mode
    _owner = threading.get_ident()
    _make_mode = make_mode
    host_threads.install(ensure_thread_mode, on_spawn)


def stop() -> None:
    """The device ends: threads started from now on get no mode (those that have one
    keep it; it lets calls through while no device is active)."""
    global _owner
    _owner = None
    host_threads.uninstall(ensure_thread_mode)


def is_owner() -> bool:
    """Whether the calling thread entered the active device (and has its own mode)."""
    return threading.get_ident() == _owner


def has_thread_mode() -> bool:
    """Whether the calling thread has a ThreadMode that serves the active device."""
    return getattr(_local, "mode", None) is not None and threading.get_ident() != _owner


def ensure_thread_mode() -> None:
    """Push the ThreadMode in the calling thread, unless it has one or needs none."""
    if getattr(_local, "mode", None) is not None or _make_mode is None:
        return
    if current() is None or threading.get_ident() == _owner:
        return
    mode = _make_mode()
    mode.__enter__()  # stays for the thread's life: it follows the active device
    _local.mode = mode
