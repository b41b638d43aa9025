"""Index-dependent accesses: ops whose index values name the elements of `self` they
touch (index_put_, index_copy_, scatter_, masked_fill_, ... and the gathers).

A backend issues such an op's access to `self` as a model `Pending` with the whole
view as superset (`pending_for`), then, once the index values exist, computes the exact
set with `touched` and calls `HappensBefore.resolve`. The virtual device does it when
the op runs; the GPU backend when a host sync covers a copy of the index values.

`touched` runs the op's own indexing on a grid of coordinates instead of data: for each
dim k of `self`, grid_k[i_0, ..., i_n] = i_k (an expanded arange, no memory), and the
op's selection of grid_k (index_select / gather / index / masked_select with the same
index values) gives the k-th coordinate of every element the op touches. The storage
offset of each is offset + sum(coord_k * stride_k). Cost: O(elements touched x dims).
"""

from __future__ import annotations

import torch

from ..model import Pending
from ..model.regions import from_runs, strided
from . import ranges

aten = torch.ops.aten


class Indexed:
    """How one op picks elements of its first argument: `kind` is one of
    "index" (a list of optional index tensors, as aten.index), "dim" (index_select along
    a dim), "scatter" (gather along a dim), "mask" (a broadcast boolean mask), "flat"
    (indices into the flattened tensor)."""

    __slots__ = ("kind", "is_write")

    def __init__(self, kind: str, is_write: bool):
        self.kind = kind
        self.is_write = is_write

    def index_tensors(self, args, kwargs) -> list:
        """The tensors whose values decide the set, in a fixed order."""
        if self.kind == "index":
            return [i for i in _arg(args, kwargs, 1, "indices") if i is not None]
        if self.kind in ("dim", "scatter"):
            return [_arg(args, kwargs, 2, "index")]
        if self.kind == "mask":
            return [_arg(args, kwargs, 1, "mask")]
        return [_arg(args, kwargs, 1, "index")]

    def pick(self, grid: torch.Tensor, values: list, args, kwargs) -> torch.Tensor:
        """The op's selection of `grid`, with `values` in place of index_tensors()."""
        if self.kind == "index":
            it = iter(values)
            indices = [None if i is None else next(it) for i in _arg(args, kwargs, 1, "indices")]
            return aten.index.Tensor(grid, indices)
        if self.kind == "dim":
            return aten.index_select.default(grid, _arg(args, kwargs, 1, "dim"), values[0])
        if self.kind == "scatter":
            return aten.gather.default(grid, _arg(args, kwargs, 1, "dim"), values[0])
        if self.kind == "mask":
            return aten.masked_select.default(grid, values[0])
        return aten.reshape.default(grid, (-1,))[values[0].reshape(-1)]


    def rows(self, values: list, args, kwargs, ndim: int):
        """The op's index values when they simply pick indices along dim 0 (the common
        case: buf[idx] = v, index_select(0, idx), a scatter into a 1-D buffer), for a
        cheaper exact computation; None otherwise."""
        if len(values) != 1 or values[0].dtype in _MASKS or ndim == 0:
            return None
        if self.kind == "index" and len(_arg(args, kwargs, 1, "indices")) == 1:
            return values[0]
        if self.kind == "dim" and _arg(args, kwargs, 1, "dim") in (0, -ndim):
            return values[0]
        if self.kind in ("scatter", "flat") and ndim == 1:
            return values[0]
        return None


_MASKS = (torch.bool, torch.uint8)


def _arg(args, kwargs, pos: int, name: str):
    return args[pos] if len(args) > pos else kwargs[name]


_W, _R = True, False
INDEXED = {
    aten.index_put_.default: Indexed("index", _W),
    aten._index_put_impl_.default: Indexed("index", _W),
    aten.index_copy_.default: Indexed("dim", _W),
    aten.index_fill_.int_Scalar: Indexed("dim", _W),
    aten.index_fill_.int_Tensor: Indexed("dim", _W),
    aten.index_add_.default: Indexed("dim", _W),
    aten.index_reduce_.default: Indexed("dim", _W),
    aten.scatter_.src: Indexed("scatter", _W),
    aten.scatter_.value: Indexed("scatter", _W),
    aten.scatter_.reduce: Indexed("scatter", _W),
    aten.scatter_.value_reduce: Indexed("scatter", _W),
    aten.scatter_add_.default: Indexed("scatter", _W),
    aten.scatter_reduce_.two: Indexed("scatter", _W),
    aten.masked_fill_.Scalar: Indexed("mask", _W),
    aten.masked_fill_.Tensor: Indexed("mask", _W),
    aten.masked_scatter_.default: Indexed("mask", _W),
    aten.put_.default: Indexed("flat", _W),
    # Gathers: a read of only the named elements (a report then names the right pair).
    aten.index.Tensor: Indexed("index", _R),
    aten.index_select.default: Indexed("dim", _R),
    aten.gather.default: Indexed("scatter", _R),
    aten.take.default: Indexed("flat", _R),
}


def indexed(func) -> Indexed | None:
    """How `func` picks elements of its first argument, or None if it is not indexed
    (or exact sets are switched off: ranges.set_exact)."""
    return INDEXED.get(func) if ranges.exact_sets() else None


def pending_for(size, stride, offset: int, itemsize: int) -> Pending:
    """A pending access whose superset is the whole view."""
    return Pending(*ranges.layout_set(tuple(size), tuple(stride), offset, itemsize))


def touched(ix: Indexed, size, stride, offset: int, itemsize: int, values: list,
            args, kwargs) -> tuple | None:
    """(start, stop, region) of the bytes of its storage that the op touches in a view
    (size, stride, offset in elements) given its index values (CPU tensors); None when
    the values name no valid element set (the op itself then fails)."""
    rows = ix.rows(values, args, kwargs, len(size))
    if rows is not None:
        hit = _rows_set(rows, size, stride, offset, itemsize)
        if hit is not False:
            return hit
    return _exact(lambda grid: ix.pick(grid, values, args, kwargs), size, stride, offset, itemsize)


def key_set(t: torch.Tensor, key) -> tuple | None:
    """(start, stop, region) of the bytes of host tensor `t` that `t[key]` names, for
    any Python index (ints, slices, masks, index tensors or lists); None if invalid."""
    if _is_basic(key):  # ints, slices, None, ...: t[key] is a view, its set is exact
        with torch._C.DisableTorchFunction():
            view = t[key]
            layout = (tuple(view.shape), tuple(view.stride()), view.storage_offset(),
                      view.element_size())
        return ranges.layout_set(*layout)
    size, stride, offset, itemsize = tuple(t.shape), t.stride(), t.storage_offset(), t.element_size()
    if isinstance(key, torch.Tensor) and key.dtype not in _MASKS and size:
        hit = _rows_set(key, size, stride, offset, itemsize)
        if hit is not False:
            return hit
    return _exact(lambda grid: grid[key], size, stride, offset, itemsize)


def _is_basic(key) -> bool:
    parts = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, (int, slice)) and not isinstance(k, bool)
               for k in parts)


FAST_ROWS = 4096  # more index values than this: the torch path is faster


def _rows_set(rows: torch.Tensor, size, stride, offset, itemsize):
    """The set of rows `rows` along dim 0 of a view, in Python (a few us for a few
    rows, where the grid's torch calls cost ~100 us); None if an index is out of range,
    False if this shortcut does not apply."""
    if rows.numel() > FAST_ROWS or rows.is_floating_point() or rows.is_complex():
        return False
    with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
        picked = (rows if rows.dim() == 1 else rows.reshape(-1)).tolist()
    n, st = size[0], stride[0]
    row_lo, row_hi, row_region = strided(size[1:], stride[1:], 0, itemsize)
    if row_region is not None:
        return False  # strided rows: the grid handles it
    if row_lo == row_hi:
        return 0, 0, None
    firsts = set()
    for i in picked:
        if i < 0:
            i += n
        if not 0 <= i < n:
            return None
        firsts.add((offset + i * st) * itemsize)
    starts = sorted(firsts)
    return from_runs([a + row_lo for a in starts], [a + row_hi for a in starts])


def _exact(pick, size, stride, offset, itemsize) -> tuple | None:
    try:
        with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
            return _touched(pick, tuple(size), tuple(stride), offset, itemsize)
    except (IndexError, RuntimeError, ValueError, TypeError):
        return None


def _touched(pick, size, stride, offset, itemsize):
    ndim = len(size)
    total = None
    for k in range(ndim):
        n, st = size[k], stride[k]
        if n == 1 or st == 0:
            continue  # every selected element has the same offset along this dim
        shape = [1] * ndim
        shape[k] = n
        grid = torch.arange(n).view(shape).expand(size)
        part = pick(grid) * st
        total = part if total is None else total.add_(part)
    if total is None:  # one element (or a 0-dim tensor): whether the op picks it at all
        total = pick(torch.zeros((), dtype=torch.long).expand(size))
    elems = torch.unique(total.reshape(-1))  # sorted
    if elems.numel() == 0:
        return 0, 0, None
    elems.add_(offset)
    if elems.numel() == 1:
        first = int(elems[0]) * itemsize
        return first, first + itemsize, None
    breaks = torch.nonzero(elems[1:] - elems[:-1] != 1).reshape(-1)
    firsts = torch.cat([elems[:1], elems[breaks + 1]])
    lasts = torch.cat([elems[breaks], elems[-1:]])
    return from_runs((firsts * itemsize).tolist(), ((lasts + 1) * itemsize).tolist())
