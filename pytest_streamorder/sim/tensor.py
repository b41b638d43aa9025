"""Device tensors of the virtual device.

A `DeviceTensor` reports device cuda:0 to torch and to the user, but owns no memory of
its own: it is a view (size, stride, offset, dtype) of a `VirtualStorage`, whose block
is a CPU buffer that queued ops fill when the scheduler runs them. Views share the
storage object, so the block is freed when the last view is gone.
"""

from __future__ import annotations

import torch

from ..ops.ranges import extent

CUDA0 = torch.device("cuda", 0)
_CPU = torch.device("cpu")
# The size of the (data-less) C++ storage of a device tensor with no bytes: room for the
# layout CUDA gives such a tensor when it is an out= that an op resizes (issue.py).
RESIZE_ROOM = 1 << 40

# The handler of every aten op on a device tensor: interception.py registers it when it
# is imported (device.py imports it before any device tensor exists).
_dispatch = None
# The handler of every torch call with a device tensor argument (interception.py too).
_function = None


def set_dispatch(handler) -> None:
    global _dispatch
    _dispatch = handler


def set_function(handler) -> None:
    global _function
    _function = handler


class DeviceTensor(torch.Tensor):
    _vs: object  # memory.VirtualStorage: the block and its model allocation
    _layout: tuple  # (size, stride, offset): what queued work needs, without torch calls
    _range: tuple  # (start, stop) bytes of the storage it can touch

    @staticmethod
    def __new__(cls, storage, size, stride, offset: int, dtype: torch.dtype):
        t = torch.Tensor._make_wrapper_subclass(
            cls, size, strides=stride, storage_offset=offset, dtype=dtype, device=CUDA0,
            storage_size=storage.block.nbytes or RESIZE_ROOM, requires_grad=False)
        t._vs = storage
        t._layout = (tuple(size), tuple(stride), offset)
        t._range = extent(size, stride, offset, dtype.itemsize)
        return t

    def set_layout(self, size, stride, offset: int) -> None:
        """Give this tensor a new layout of its storage in place (t_(), unsqueeze_(), an
        empty out= resized): torch's metadata, and ours, which queued work reads."""
        with torch.utils._mode_utils.no_dispatch():
            torch.ops.aten.as_strided_.default(self, size, stride, offset)
        self._layout = (tuple(size), tuple(stride), offset)
        self._range = extent(size, stride, offset, self.dtype.itemsize)

    # Every torch call with a device tensor argument, in any thread, with or without the
    # function mode (which is mostly off). The handler calls torch with the subclass
    # protocol disabled, so results are what dispatch made (never re-wrapped).
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        return _function(func, types, args, kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        return _dispatch(func, types, args, kwargs)

    def cpu_view(self) -> torch.Tensor:
        """The tensor's bytes, now, as a CPU tensor (no ordering, no sync)."""
        return view_of(self._vs.block, self.dtype, tuple(self.shape), self.stride(),
                       self.storage_offset())


class Twin(torch.Tensor):
    """A stand-in with C++ device cpu, handed to the few torch methods that install a
    CUDA device guard in C++ (indexing, copy_, int(), ...) before any mode sees the op,
    in the forms interception.DIRECT does not issue itself; dispatch maps it back to its
    DeviceTensor."""

    _dt: DeviceTensor

    @staticmethod
    def __new__(cls, dt: DeviceTensor):
        # From _layout, which in-place view ops keep in step: dt.shape, dt.stride(), ...
        # would each pass through the function mode (6.7 -> ~3 us a twin).
        size, stride, offset = dt._layout
        t = torch.Tensor._make_wrapper_subclass(
            cls, size, strides=stride, storage_offset=offset,
            dtype=dt.dtype, device=_CPU, storage_size=dt._vs.block.nbytes,
            requires_grad=False)
        t._dt = dt
        return t

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        return _dispatch(func, types, args, kwargs)


def _flat(block, dtype: torch.dtype) -> torch.Tensor:
    flat = block.typed.get(dtype)
    if flat is None:
        data = block.data
        usable = data.numel() // dtype.itemsize * dtype.itemsize
        flat = block.typed[dtype] = data[:usable].view(dtype)
    return flat


def view_of(block, dtype: torch.dtype, size, stride, offset: int) -> torch.Tensor:
    """A strided view of a block's bytes as dtype, without any dispatch mode seeing it."""
    return torch.ops.aten.as_strided.default(_flat(block, dtype), size, stride, offset)


def view_of_unmoded(block, dtype: torch.dtype, size, stride, offset: int) -> torch.Tensor:
    """view_of for a caller that has disabled torch function modes already (queued work
    running): the tensor method skips the aten op's Python call, ~1.3 us a view."""
    return _flat(block, dtype).as_strided(size, stride, offset)
