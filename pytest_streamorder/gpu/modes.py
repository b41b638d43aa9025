"""The two torch modes through which the GPU backend sees a program: a dispatch mode for
every aten op on CUDA tensors, and a function mode for host calls on pinned tensors and
for pinned allocations. Model updates hold the runtime lock (host_threads.py): other
threads have modes of their own (threads.py)."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ..host_threads import RUNTIME_LOCK
from ..model import Site
from ..ops.host import pinned_operands
from ..ops.schema import op_info

T = torch.Tensor


def _is_cuda_device(dev) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    return isinstance(dev, int) and not isinstance(dev, bool)


class DispatchMode(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch otherwise wraps __torch_dispatch__ in torch._disable_dynamo (about 10 us
        # per op on the H200's host). Nothing compiles while the backend is attached:
        # compiled functions run eagerly (compiled.py).
        return False

    def __init__(self, be):
        super().__init__()
        self.be = be

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if kwargs is None:
            kwargs = {}
        info = op_info(func)
        if info.metadata or (info.is_view and not info.may_copy):
            return func(*args, **kwargs)  # no device work, on any device
        tensors = info.tensor_args(args, kwargs)
        for t, _w in tensors:
            if t.is_cuda:
                break
        else:
            dev = kwargs.get("device")
            if dev is None or not _is_cuda_device(dev):
                return func(*args, **kwargs)  # host-only op
        be = self.be
        if be is None or not be.active:
            return func(*args, **kwargs)
        # Held while the op runs too: callbacks it fires are applied after its launch
        # (device_op.py), so no other thread's callback may slip in between.
        with RUNTIME_LOCK:
            return be._device_op(func, info, args, kwargs, tensors)


class FunctionMode(TorchFunctionMode):
    def __init__(self, be):
        super().__init__()
        self.be = be

    def __torch_function__(self, func, types, args=(), kwargs=None):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if kwargs is None:
            kwargs = {}
        be = self.be
        if be is None:
            return func(*args, **kwargs)
        if be._pinned and be.active:
            hits = pinned_operands(args, kwargs, be._pinned.lookup)
            if hits:
                with RUNTIME_LOCK:
                    return be._host_call(func, args, kwargs, hits)
        if kwargs.get("pin_memory") or func is T.pin_memory:
            out = func(*args, **kwargs)
            if be.active and isinstance(out, T) and not out.is_cuda:
                with RUNTIME_LOCK:
                    be._register_pinned(out, Site.here(1, be.depth))
            return out
        return func(*args, **kwargs)
