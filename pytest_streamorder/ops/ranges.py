"""The bytes of its storage a tensor can touch: [start, stop). Accesses conflict when
these overlap, so views and offsets count; a zero-size tensor touches nothing: (0, 0),
which lies inside any allocation, a zero-byte one included."""

from __future__ import annotations

import torch


def extent(size, stride, offset: int, itemsize: int) -> tuple[int, int]:
    """[start, stop) bytes of its storage that a strided layout can touch (negative
    strides included); (0, 0) when it has no element."""
    first = last = offset
    for n, st in zip(size, stride):
        if n == 0:
            return 0, 0
        if st > 0:
            last += (n - 1) * st
        else:
            first += (n - 1) * st
    return first * itemsize, (last + 1) * itemsize


def byte_range(t: torch.Tensor) -> tuple[int, int]:
    """[start, stop) bytes of its storage that tensor `t` can touch."""
    isz = t.element_size()
    start = t.storage_offset() * isz
    if t.is_contiguous():  # the common case, without a loop over the dimensions
        n = t.numel()
        return (start, start + n * isz) if n else (0, 0)
    return extent(t.shape, t.stride(), t.storage_offset(), isz)


def storage_base(t: torch.Tensor) -> int:
    """Address of the tensor's storage (what the allocator handed out)."""
    return t.data_ptr() - t.storage_offset() * t.element_size()
