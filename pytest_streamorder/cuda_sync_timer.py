"""Timing the host's waits on a real GPU, for `stream_benchmark` (benchmarking.py).

`SyncTimer` wraps torch.cuda.synchronize, Stream.synchronize and Event.synchronize with
perf_counter while it is active, and (implicit=True) times through a TorchFunctionMode
the calls that make the host wait for a CUDA tensor (`implicit_sync_mode`). The virtual
device needs none of this: it reads blocked time from its virtual clock.

Imports no torch until a timer is entered.
"""

from __future__ import annotations

import time
from typing import Callable


class SyncTimer:
    """While active: real CUDA syncs are timed. Explicit ones by wrapping
    torch.cuda.synchronize, Stream.synchronize and Event.synchronize; implicit ones (a
    CUDA tensor read by the host) through a TorchFunctionMode."""

    current: "SyncTimer | None" = None

    def __init__(self, implicit: bool):
        self.implicit = implicit
        self.blocked_s = 0.0
        self.syncs = 0
        self._depth = 0
        self._saved: list = []
        self._mode = None

    def _timed(self, original):
        timer = self

        def timed(*args, **kwargs):
            if timer._depth:
                return original(*args, **kwargs)
            timer._depth += 1
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timer.blocked_s += time.perf_counter() - t0
                timer.syncs += 1
                timer._depth -= 1

        timed.__wrapped__ = original
        return timed

    def raw_synchronize(self):
        import torch

        self._depth += 1
        try:
            torch.cuda.synchronize()
        finally:
            self._depth -= 1

    def __enter__(self):
        import torch

        if SyncTimer.current is not None:
            raise RuntimeError("stream_benchmark: nested benchmarks are not supported")
        for owner, name in ((torch.cuda, "synchronize"), (torch.cuda.Stream, "synchronize"),
                            (torch.cuda.Event, "synchronize")):
            own = name in vars(owner)  # False: a class that inherits the method
            original = getattr(owner, name)
            self._saved.append((owner, name, original if own else None))
            setattr(owner, name, self._timed(original))
        SyncTimer.current = self
        if self.implicit:
            self._mode = implicit_sync_mode(self)
            self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        try:
            if self._mode is not None:
                self._mode.__exit__(*exc)
        finally:
            for owner, name, original in reversed(self._saved):
                if original is None:
                    delattr(owner, name)
                else:
                    setattr(owner, name, original)
            self._saved.clear()
            SyncTimer.current = None
        return False


def implicit_sync_mode(timer: SyncTimer, is_device: Callable | None = None):
    """A TorchFunctionMode timing the calls that make the host wait for a device tensor:
    reading it on the host, or copying it to pageable/blocking host memory. `is_device`
    tells which tensors count (default: CUDA tensors)."""
    import torch
    from torch.overrides import TorchFunctionMode

    T = torch.Tensor
    always = {T.item, T.tolist, T.cpu, T.__bool__, T.__int__, T.__float__,
              T.__index__, T.nonzero, torch.nonzero, T.masked_select, torch.masked_select,
              T.unique}
    to_host = {T.to, T.copy_}
    is_device = is_device or (lambda t: isinstance(t, T) and t.is_cuda)

    def blocks(func, args, kwargs) -> bool:
        if func in always:
            return bool(args) and is_device(args[0])
        if func is T.to:
            if not (args and is_device(args[0])) or kwargs.get("non_blocking"):
                return False
            rest = list(args[1:]) + [kwargs.get("device")]
            for a in rest:
                if isinstance(a, (str, torch.device)) and torch.device(a).type == "cpu":
                    return True
                if isinstance(a, T) and not is_device(a):
                    return True
            return False
        if func is T.copy_:
            dst = args[0] if args else None
            src = args[1] if len(args) > 1 else kwargs.get("src")
            non_blocking = (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
            # non_blocking counts as asynchronous (pageable targets make it sync in fact;
            # telling them apart would cost a pinned-pointer lookup on every copy)
            return (isinstance(dst, T) and not is_device(dst) and is_device(src)
                    and not non_blocking)
        return False

    class ImplicitSyncs(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if timer._depth or (func not in always and func not in to_host) \
                    or not blocks(func, args, kwargs):
                return func(*args, **kwargs)
            timer._depth += 1
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                timer.blocked_s += time.perf_counter() - t0
                timer.syncs += 1
                timer._depth -= 1

    return ImplicitSyncs()
