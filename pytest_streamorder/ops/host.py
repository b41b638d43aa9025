"""What a host-side torch call does to pinned tensors among its arguments.

It writes its first argument when it is in place (name ends in '_') or __setitem__,
and writes `out=`; it reads every other tensor argument (list elements included),
unless it only made a view of it (then no data was read yet; a later access through
the view counts, since the view shares the pinned storage): basic indexing
`pinned[i]` is a view, not a read. Metadata queries (size, shape, data_ptr, ...) touch
no data, and a call that returns a device tensor is an upload the device path saw. A
call with a device tensor among its arguments is a device op: the backend's device
path sees it.

Each access is the exact set of elements touched (`host_access_specs`): a view's
elements, and for `pinned[key] = v` / `pinned[key]` with an index tensor, list or mask,
the elements the key names (its values are on the host already).

`pinned.numpy()` is a view too: it hands back a NumPy view that reports the accesses
made through it (`host_result`, ops/numpy_views.py).
"""

from __future__ import annotations

import torch

from .catalog import HOST_METADATA_FUNCS
from .indexed import key_set
from .ranges import access_spec, tensor_access, tensor_set

T = torch.Tensor


def call_name(func) -> str:
    return getattr(func, "__name__", "") or str(func)


def writes_first_argument(name: str) -> bool:
    return name == "__setitem__" or (name.endswith("_") and not name.endswith("__"))


def is_metadata_call(func) -> bool:
    return call_name(func) in HOST_METADATA_FUNCS


def pinned_operands(args, kwargs, lookup):
    """(tensor, place, allocation) for each argument whose storage `lookup` knows as
    pinned (place: position, keyword, or (position/keyword, index) inside a list);
    None when a device tensor is among the arguments."""
    hits = None
    for where, v in (*enumerate(args), *kwargs.items()):
        if isinstance(v, T):
            if v.is_cuda:
                return None
            alloc = lookup(v)
            if alloc is not None:
                hits = hits or []
                hits.append((v, where, alloc))
        elif isinstance(v, (list, tuple)):
            for j, x in enumerate(v):
                if isinstance(x, T):
                    if x.is_cuda:
                        return None
                    alloc = lookup(x)
                    if alloc is not None:
                        hits = hits or []
                        hits.append((x, (where, j), alloc))
    return hits


def host_accesses(func, hits, out) -> list[tuple[torch.Tensor, object, bool]]:
    """(tensor, allocation, is_write) of the host call `func` that returned `out`, for
    the pinned operands `hits` (from pinned_operands)."""
    name = call_name(func)
    if name in HOST_METADATA_FUNCS:
        return []
    if isinstance(out, T) and out.is_cuda:
        return []  # an upload (pinned.cuda(), .to("cuda")): the device path saw the copy
    if name == "numpy":
        return []  # a view: accesses through it are reported by it (host_result)
    writes_self = writes_first_argument(name)
    views = _storages(out)
    accesses = []
    for t, where, alloc in hits:
        is_write = (where == 0 and writes_self) or where == "out"
        if not is_write and views and _storage_key(t) in views:
            continue  # a view of the pinned tensor: no data read yet
        accesses.append((t, alloc, is_write))
    return accesses


def _storage_key(t: torch.Tensor):
    try:
        return t.untyped_storage().data_ptr()
    except Exception:
        return None


def _storages(out) -> set:
    """Storage addresses of the host tensors a call returned."""
    outs = out if isinstance(out, (list, tuple)) else (out,)
    keys = set()
    for o in outs:
        if isinstance(o, T) and not o.is_cuda:
            key = _storage_key(o)
            if key:  # 0: an empty storage, which is no view of anything
                keys.add(key)
    return keys


def host_access_specs(func, hits, out, args) -> list[tuple]:
    """The model access specs (ranges.access_spec) of the host call `func(*args)` that
    returned `out`, for the pinned operands `hits`: each the exact set it touched."""
    name = call_name(func)
    specs = []
    for t, alloc, is_write in host_accesses(func, hits, out):
        if name in ("__setitem__", "__getitem__") and len(args) > 1 and t is args[0]:
            exact = key_set(t, args[1])  # only the elements the key names
            specs.append(access_spec(alloc, *(exact or tensor_set(t)), is_write))
        else:
            specs.append(tensor_access(alloc, t, is_write))
    return specs


def host_result(func, out, args):
    """What a host call on pinned tensors hands back: `Tensor.numpy()` of a pinned tensor
    becomes a NumPy view reporting each host access through it (NumPy is imported only
    here, when the program already uses it)."""
    if getattr(func, "__name__", "") == "numpy" and args and type(out).__module__ == "numpy":
        from .numpy_views import pinned_view
        return pinned_view(out, args[0])
    return out
