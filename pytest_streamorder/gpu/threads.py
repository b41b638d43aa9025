"""Host threads on the real-GPU backend.

CUDA's current stream is per host thread natively, and the model attributes an op to
the issuing thread's current stream (`torch._C._cuda_getCurrentStream`, streams.py). What
threads need is to be seen at all: torch's dispatch and function modes live on per-thread
stacks, so the modes the backend pushes when it is entered see only that thread. Every
other thread gets, once, a `ThreadDispatchMode` and a `ThreadFunctionMode` that serve
whichever CudaBackend is active (none: they let calls through; in the thread that entered
it, whose own modes see the calls, too). They are pushed when a thread starts while the
backend is active and before every ThreadPoolExecutor task (host_threads.py).

Not seen: device work from a thread that was started before the backend and is not a
pool worker (nothing of ours runs in it: aten ops on CUDA tensors reach no Python code
without a mode). Its work is missing from the model: races with it are missed, never
invented (a missing access cannot conflict; its syncs and event records still reach the
model through the trace callbacks). Calling `ensure_thread_modes()` in it fixes that.
"""

from __future__ import annotations

import threading

from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .. import host_threads
from .modes import DispatchMode, FunctionMode

_local = threading.local()  # .pushed: this thread has its thread modes
_active = None  # the active CudaBackend, while it runs
_owner: int | None = None  # the thread that entered it (it has its own modes)


def start(be) -> None:
    """The calling thread has entered `be`: set up every other thread."""
    global _active, _owner
    _active, _owner = be, threading.get_ident()
    host_threads.install(ensure_thread_modes)


def stop() -> None:
    global _active, _owner
    _active, _owner = None, None
    host_threads.uninstall(ensure_thread_modes)


def backend_for_this_thread():
    """The backend a thread mode should serve now: None when none is active or when
    this is the thread that entered it."""
    be = _active
    if be is None or threading.get_ident() == _owner:
        return None
    return be


def ensure_thread_modes() -> None:
    """Push the thread modes in the calling thread, unless it has them or needs none."""
    if getattr(_local, "pushed", False) or backend_for_this_thread() is None:
        return
    ThreadDispatchMode().__enter__()  # both stay for the thread's life
    ThreadFunctionMode().__enter__()
    _local.pushed = True


class ThreadDispatchMode(DispatchMode):
    def __init__(self):
        TorchDispatchMode.__init__(self)

    @property
    def be(self):
        return backend_for_this_thread()


class ThreadFunctionMode(FunctionMode):
    def __init__(self):
        TorchFunctionMode.__init__(self)

    @property
    def be(self):
        return backend_for_this_thread()
