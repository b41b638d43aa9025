"""NumPy views of pinned host memory that report the host's accesses through them.

Under either backend, `Tensor.numpy()` of a pinned tensor returns a `PinnedArray`: an
ndarray subclass on the same bytes (taking it is a view, not a read). Each access
through it is reported to the running backend at the user's line, as the exact set of
bytes of the pinned storage it touched:

- indexing: `a[i]`, `a[mask]`, `a[[1, 3]]` read the elements the key names; a basic
  slice `a[:n]` is a view (a PinnedArray again), not a read; `a[key] = v` writes them;
- ufuncs (`np.add(x, 1, out=a)`, `a += 1`, `a.sum()`): inputs read, `out=` written
  (`where=` narrows both), `ufunc.at` writes the elements its indices name;
- `__array_function__` calls (`np.copyto(a, src)`, `np.sum(a)`, `np.take(a, idx)`):
  array arguments read, `out=` written, the target of the writers (copyto, put, place,
  putmask, fill_diagonal, put_along_axis) written at the elements they write; a call
  whose result is a view of an argument (np.reshape, np.transpose, ...) reads nothing;
- methods that read in C (tolist, item, copy, astype, repr, reductions, iteration, ...)
  or write (fill, sort, put, ...).

Not seen: `np.asarray(a)` (a plain view), buffer/ctypes access, and C extensions; a
write through them to the source of a pending H2D copy is still found by comparing the
source's bytes (ops/host_writes.py), an early read of a pending D2H target shows poison.

Imported lazily, when a pinned tensor's `.numpy()` is called (NumPy is loaded then):
the plugin itself never imports NumPy.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from ..backend import active_backend
from ..model import Site
from ..model.regions import from_runs
from .ranges import layout_set

_NUMPY_DIR = os.path.dirname(os.path.abspath(np.__file__)) + os.sep
_HERE = os.path.abspath(__file__)


class Origin:
    """The pinned tensor a view's bytes belong to, and its storage's address range."""

    __slots__ = ("tensor", "lo", "hi")

    def __init__(self, tensor, lo: int, hi: int):
        self.tensor = tensor
        self.lo = lo
        self.hi = hi

    def holds(self, a: np.ndarray) -> bool:
        """Whether the array's data lies in this storage (a view of it, not a copy)."""
        return self.lo <= _ptr(a) < self.hi

    def report(self, op: str, sets: list) -> None:
        """The host accessed `sets` [(start, stop, region, is_write)] of the storage."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        be = active_backend()
        access = getattr(be, "host_access_sets", None)
        if access is not None and sets:
            access(self.tensor, op, sets, _site())


def _ptr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _site(depth: int = 10) -> Site:
    """The caller's stack without NumPy's frames and ours (np.sum's Python wrapper is
    NumPy's; the user's line is below it)."""
    frame = sys._getframe(2)
    frames = []
    while frame is not None and len(frames) < depth:
        name = frame.f_code.co_filename
        if not name.startswith(_NUMPY_DIR) and name != _HERE:
            frames.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back
    return Site(tuple(frames))


# --- the bytes an access touches --------------------------------------------------------

def elements(origin: Origin, a: np.ndarray) -> tuple:
    """(start, stop, region) of every element of `a`, in bytes of the origin's storage."""
    if a.size == 0:
        return 0, 0, None
    off = _ptr(a) - origin.lo
    if a.flags.c_contiguous:
        return off, off + a.nbytes, None
    # Each element is `itemsize` bytes: one more dimension of stride 1 says so exactly.
    return layout_set(a.shape + (a.itemsize,), a.strides + (1,), off, 1)


def offsets(origin: Origin, a: np.ndarray) -> np.ndarray:
    """The byte offset of each element of `a` in the storage, as an int64 array of its
    shape: indexing it with a key gives the offsets of the elements the key names."""
    o = np.full(a.shape, _ptr(a) - origin.lo, dtype=np.int64)
    for d, (n, st) in enumerate(zip(a.shape, a.strides)):
        shape = [1] * a.ndim
        shape[d] = n
        o += (np.arange(n, dtype=np.int64) * st).reshape(shape)
    return o


def offsets_set(picked, itemsize: int) -> tuple:
    """(start, stop, region) of the elements at these byte offsets (any shape, repeats)."""
    u = np.unique(np.asarray(picked, dtype=np.int64).ravel())
    if u.size == 0:
        return 0, 0, None
    ends = u + itemsize
    breaks = np.flatnonzero(u[1:] > ends[:-1]) + 1
    starts = u[np.concatenate(([0], breaks))]
    stops = ends[np.concatenate((breaks - 1, [u.size - 1]))]
    return from_runs(starts.tolist(), stops.tolist())


def _basic(key) -> bool:
    """Whether the key is basic indexing (ints, slices, None, ...): a view, or one item."""
    for k in key if type(key) is tuple else (key,):
        if k is None or k is Ellipsis or type(k) is slice:
            continue
        if isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
            continue
        return False
    return True


def key_set(origin: Origin, a: np.ndarray, key) -> tuple:
    """(start, stop, region) of the elements of `a` that `a[key]` names."""
    if _basic(key):
        items = key if type(key) is tuple else (key,)
        if not any(k is Ellipsis for k in items):
            items += (Ellipsis,)  # a full integer key then gives a 0-d view, not a scalar
        return elements(origin, np.ndarray.__getitem__(a, items))
    return offsets_set(offsets(origin, a)[key], a.itemsize)


def _marker_set(origin: Origin, a: np.ndarray, mark) -> tuple:
    """The elements of `a` that `mark(m)` sets in a boolean array m of a's shape."""
    m = np.zeros(a.shape, dtype=bool)
    mark(m)
    return offsets_set(offsets(origin, a)[m], a.itemsize)


def _plain(x):
    return x.view(np.ndarray) if isinstance(x, PinnedArray) else x


def _origin(x) -> Origin | None:
    return x._so_origin if isinstance(x, PinnedArray) else None


def _report_all(op: str, accesses: list) -> None:
    """[(origin, set, is_write)] reported per origin (one call each)."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    by: dict = {}
    for origin, s, w in accesses:
        by.setdefault(id(origin), (origin, []))[1].append((*s, w))
    for origin, sets in by.values():
        origin.report(op, sets)


# --- the array ------------------------------------------------------------------------

class PinnedArray(np.ndarray):
    """A NumPy view of pinned memory that reports each host access through it."""

    _so_origin: Origin | None = None

    def __array_finalize__(self, obj):
        origin = getattr(obj, "_so_origin", None)
        if origin is not None and (self.size == 0 or origin.holds(self)):
            self._so_origin = origin  # a view; a copy made from one is plain memory

    def __getitem__(self, key):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        origin = self._so_origin
        out = np.ndarray.__getitem__(self, key)
        if origin is None:
            return out
        if isinstance(out, np.ndarray) and (out.size == 0 or origin.holds(out)):
            return out  # a view: no data read yet
        origin.report("numpy read a[key]", [(*key_set(origin, self, key), False)])
        return _plain(out)

    def __setitem__(self, key, value):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        origin = self._so_origin
        np.ndarray.__setitem__(self, key, _plain(value))
        if origin is None:
            return
        source = _origin(value)
        if source is not None:
            source.report("numpy read (assigned value)", [(*elements(source, value), False)])
        origin.report("numpy write a[key] = ...", [(*key_set(origin, self, key), True)])

    def __iter__(self):
        if self._so_origin is None or self.ndim == 0:
            yield from np.ndarray.__iter__(self)
            return
        for i in range(len(self)):
            yield self[i]  # each row a view, each item a read

    def item(self, *args):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        origin = self._so_origin
        out = np.ndarray.item(self, *args)
        if origin is not None:
            if not args:  # the one element
                s = elements(origin, self)
            elif len(args) == 1 and not isinstance(args[0], tuple):  # a flat index
                s = key_set(origin, self, np.unravel_index(int(args[0]) % self.size, self.shape))
            else:
                s = key_set(origin, self, tuple(args[0] if len(args) == 1 else args))
            origin.report("numpy item", [(*s, False)])
        return out

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        accesses = []
        where = kwargs.get("where", True)
        outs = kwargs.get("out")
        outs = outs if isinstance(outs, tuple) else (() if outs is None else (outs,))
        shape = next((o.shape for o in outs if isinstance(o, np.ndarray)), None)
        for i, x in enumerate(inputs):
            origin = _origin(x)
            if origin is None:
                continue
            if method == "at" and i == 0:
                ix = inputs[1] if len(inputs) > 1 else ()
                accesses.append((origin, offsets_set(offsets(origin, x)[ix], x.itemsize), True))
            else:
                accesses.append((origin, _masked(origin, x, where, shape), False))
        for o in outs:
            origin = _origin(o)
            if origin is not None:
                accesses.append((origin, _masked(origin, o, where, o.shape), True))
        plain_outs = tuple(_plain(o) for o in outs)
        if outs:
            kwargs["out"] = plain_outs
        result = getattr(ufunc, method)(*(_plain(x) for x in inputs), **kwargs)
        _report_all(f"numpy {ufunc.__name__}" + (f".{method}" if method != "__call__" else ""),
                    accesses)
        if outs:  # hand back the caller's own out arrays
            if isinstance(result, tuple):
                return tuple(o if r is p else r for r, p, o in zip(result, plain_outs, outs))
            if result is plain_outs[0]:
                return outs[0]
        return result

    def __array_function__(self, func, types, args, kwargs):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        writes = func in _WRITERS
        accesses = []
        viewed = []  # origins of the arguments, to recognise a view among the results
        for i, x in enumerate(_flat(args)):
            origin = _origin(x)
            if origin is None:
                continue
            viewed.append(origin)
            if i == 0 and writes:
                accesses.append((origin, _written(origin, x, func, args, kwargs), True))
            elif i == 0 and func in _SELECTS:
                probe = {k: _unwrap(v) for k, v in kwargs.items() if k != "out"}
                picked = func(offsets(origin, x), *(_unwrap(a) for a in args[1:]), **probe)
                accesses.append((origin, offsets_set(picked, x.itemsize), False))
            else:
                accesses.append((origin, elements(origin, x), False))
        outs = kwargs.get("out")
        for key, v in kwargs.items():
            for o in v if key == "out" and isinstance(v, tuple) else (v,):
                origin = _origin(o)
                if origin is not None:
                    accesses.append((origin, elements(origin, o), key == "out"))
        plain_kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
        result = func(*(_unwrap(a) for a in args), **plain_kwargs)
        result, views = _rewrap(result, viewed)
        if views:  # a view of an argument (np.reshape, np.split, ...): it read nothing
            accesses = [a for a in accesses if a[2] or a[0] not in views]
        _report_all(f"numpy {getattr(func, '__name__', func)}", accesses)
        if isinstance(outs, PinnedArray) and result is plain_kwargs["out"]:
            return outs
        return result


def _masked(origin: Origin, a: np.ndarray, where, shape) -> tuple:
    """The elements of `a` an elementwise ufunc touches under `where=` (all without it)."""
    if where is True or shape is None or a.shape != tuple(shape):
        return elements(origin, a)
    mask = np.broadcast_to(np.asarray(where, dtype=bool), a.shape)
    return offsets_set(offsets(origin, a)[mask], a.itemsize)


def _flat(args) -> list:
    """Positional arguments, with list/tuple arguments' items in place (np.concatenate)."""
    out = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(a)
        else:
            out.append(a)
    return out


def _unwrap(x):
    if isinstance(x, PinnedArray):
        return x.view(np.ndarray)
    if isinstance(x, (list, tuple)) and any(isinstance(v, PinnedArray) for v in x):
        return type(x)(_plain(v) for v in x)
    return x


def _rewrap(result, origins: list):
    """Results that are views of a pinned argument become PinnedArrays again; returns
    (result, the origins viewed)."""
    views = []

    def one(r):
        if isinstance(r, np.ndarray) and not isinstance(r, PinnedArray) and r.size:
            for origin in origins:
                if origin.holds(r):
                    views.append(origin)
                    v = r.view(PinnedArray)
                    v._so_origin = origin
                    return v
        return r

    if isinstance(result, (list, tuple)):
        result = type(result)(one(r) for r in result)
    else:
        result = one(result)
    return result, views


def _written(origin: Origin, a: np.ndarray, func, args, kwargs) -> tuple:
    """The elements a writer function writes in its first argument: the same call on a
    boolean array, writing True, marks them."""
    value_at = _WRITERS[func]
    if value_at is None:  # np.copyto(dst, src, casting, where): all, or where=
        where = kwargs.get("where", args[3] if len(args) > 3 else True)
        return _masked(origin, a, where, a.shape)
    pos, name = value_at
    rest = list(args[1:])
    kw = {k: _plain(v) for k, v in kwargs.items()}
    if name in kw:
        kw[name] = True
    elif len(args) > pos:
        rest[pos - 1] = True
    rest = [_plain(r) for r in rest]
    return _marker_set(origin, a, lambda m: func(m, *rest, **kw))


# Writers of their first argument: where their value argument is (position, keyword).
_WRITERS = {
    np.copyto: None,
    np.put: (2, "v"),
    np.place: (2, "vals"),
    np.putmask: (2, "values"),
    np.fill_diagonal: (1, "val"),
    np.put_along_axis: (2, "values"),
}
# Readers of some elements of their first argument: the same call on the offsets says which.
_SELECTS = {np.take, np.take_along_axis, np.compress}


def _reading(name: str):
    method = getattr(np.ndarray, name)

    def read(self, *args, **kwargs):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        origin = self._so_origin
        if origin is None:
            return method(self, *args, **kwargs)
        out = method(self.view(np.ndarray), *args, **kwargs)
        origin.report(f"numpy {name.strip('_')}", [(*elements(origin, self), False)])
        return out

    read.__name__ = name
    return read


def _writing(name: str, reads: bool):
    method = getattr(np.ndarray, name)

    def write(self, *args, **kwargs):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        origin = self._so_origin
        if origin is None:
            return method(self, *args, **kwargs)
        out = method(self.view(np.ndarray), *args, **kwargs)
        s = elements(origin, self)
        origin.report(f"numpy {name}", ([(*s, False)] if reads else []) + [(*s, True)])
        return out

    write.__name__ = name
    return write


def _view_or_read(name: str):
    method = getattr(np.ndarray, name)

    def view_or_read(self, *args, **kwargs):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        out = method(self, *args, **kwargs)
        origin = self._so_origin
        if origin is not None and isinstance(out, np.ndarray) and out.size and not origin.holds(out):
            origin.report(f"numpy {name}", [(*elements(origin, self), False)])  # it copied
            return _plain(out)
        return out

    view_or_read.__name__ = name
    return view_or_read


def _selecting(name: str):
    method = getattr(np.ndarray, name)

    def select(self, *args, **kwargs):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        origin = self._so_origin
        if origin is None:
            return method(self, *args, **kwargs)
        out = method(self.view(np.ndarray), *args, **kwargs)
        kwargs.pop("out", None)
        picked = method(offsets(origin, self), *args, **kwargs)  # the offsets it read
        origin.report(f"numpy {name}", [(*offsets_set(picked, self.itemsize), False)])
        return out

    select.__name__ = name
    return select


def _put(self, indices, values, mode="raise"):
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    origin = self._so_origin
    np.ndarray.put(self.view(np.ndarray), indices, _plain(values), mode)
    if origin is not None:
        s = _marker_set(origin, self, lambda m: m.put(indices, True, mode))
        origin.report("numpy put", [(*s, True)])


# Methods that read every element in C (reductions too: one report, not one per ufunc
# NumPy's Python helpers would call on the way).
for _name in ("tolist", "tobytes", "copy", "astype", "flatten", "__copy__", "__deepcopy__",
              "__reduce__", "__reduce_ex__", "dump", "dumps", "tofile", "__repr__", "__str__",
              "__format__", "__int__", "__float__", "__complex__", "__index__", "__bool__",
              "__contains__", "argmax", "argmin", "argsort", "argpartition", "nonzero",
              "searchsorted", "dot", "trace", "repeat", "choose", "all",
              "any", "max", "min", "sum", "prod", "mean", "std", "var", "cumsum", "cumprod",
              "round", "clip", "conj", "conjugate"):
    if hasattr(np.ndarray, _name):
        setattr(PinnedArray, _name, _reading(_name))
for _name, _reads in (("fill", False), ("sort", True), ("partition", True)):
    setattr(PinnedArray, _name, _writing(_name, _reads))
for _name in ("take", "compress"):
    setattr(PinnedArray, _name, _selecting(_name))
for _name in ("reshape", "ravel"):
    setattr(PinnedArray, _name, _view_or_read(_name))
PinnedArray.put = _put


def pinned_view(array: np.ndarray, tensor) -> PinnedArray:
    """`tensor.numpy()` (its result `array`) as a PinnedArray reporting to the backend
    that runs when an access is made. `tensor` is kept as the array's base keeps it."""
    storage = tensor.untyped_storage()
    lo = storage.data_ptr()
    view = array.view(PinnedArray)
    view._so_origin = Origin(tensor, lo, lo + storage.nbytes())
    return view
