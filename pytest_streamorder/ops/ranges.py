"""The bytes of its storage a tensor touches. `byte_range` bounds them: [start, stop);
`tensor_set` gives them exactly as (start, stop, region) (model/regions.py: region None
for a dense layout, else a strided Box), so that views count exactly: the column halves
x[:, :8] and x[:, 8:] share no byte. A zero-size tensor touches nothing: (0, 0), which
lies inside any allocation, a zero-byte one included."""

from __future__ import annotations

import torch

from ..model.regions import strided

_exact = True  # False: every set widened to its span, indexed ops whole (benchmarks only)
_SETS: dict = {}  # (size, stride, offset, itemsize) -> (start, stop, region)
_CACHES = [_SETS]  # cleared when the setting changes (a backend may add its own)


def register_cache(cache: dict) -> dict:
    """A backend's own cache of sets, cleared with ours by set_exact."""
    _CACHES.append(cache)
    return cache


def exact_sets() -> bool:
    return _exact


def set_exact(on: bool) -> bool:
    """Switch exact sets off (spans, whole-tensor indexed ops: the detector before exact
    sets) or on; returns the previous setting. For measuring what exactness costs."""
    global _exact
    previous, _exact = _exact, bool(on)
    for cache in _CACHES:
        cache.clear()
    return previous


def contiguous_strides(shape) -> tuple:
    """The strides of a contiguous (row-major) tensor of this shape."""
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


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


def layout_set(size: tuple, stride: tuple, offset: int, itemsize: int) -> tuple:
    """(start, stop, region) of a strided layout (cached: a program uses few layouts)."""
    key = (size, stride, offset, itemsize)
    hit = _SETS.get(key)
    if hit is None:
        hit = strided(size, stride, offset, itemsize)
        if not _exact and hit[2] is not None:
            hit = (hit[0], hit[1], None)
        if len(_SETS) >= 4096:
            _SETS.clear()
        _SETS[key] = hit
    return hit


def tensor_set(t: torch.Tensor) -> tuple:
    """(start, stop, region) of the bytes of its storage that tensor `t` touches."""
    if t.is_contiguous():
        isz = t.element_size()
        start = t.storage_offset() * isz
        n = t.numel()
        return (start, start + n * isz, None) if n else (0, 0, None)
    return layout_set(tuple(t.shape), tuple(t.stride()), t.storage_offset(), t.element_size())


def access_spec(alloc, start: int, stop: int, region, is_write: bool) -> tuple:
    """The model's access tuple for a set: a plain span stays a 4-tuple (the fast path)."""
    return (alloc, start, stop, is_write) if region is None else (alloc, region, is_write)


def tensor_access(alloc, t: torch.Tensor, is_write: bool) -> tuple:
    """The model's access tuple for tensor `t` of allocation `alloc`."""
    return access_spec(alloc, *tensor_set(t), is_write)


def storage_base(t: torch.Tensor) -> int:
    """Address of the tensor's storage (what the allocator handed out)."""
    return t.data_ptr() - t.storage_offset() * t.element_size()
