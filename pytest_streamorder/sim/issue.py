"""How one aten op runs on the virtual device.

An op on device tensors is *issued*: its output layout comes from running it on meta
tensors (cached by input layout), its outputs get fresh storage from the caching
allocator, the model is told its reads and writes (from the op's schema), and a
closure that runs it on the CPU buffers is queued on the current stream. Ops whose
output shape depends on data (nonzero, masked indexing, item) or that return a Python
value cannot be issued ahead: like on a GPU, they copy on the current stream and make
the host wait for that stream.

Accesses are exact sets (ops/ranges.py): a strided view touches only its elements. An
indexed op (index_put_, scatter_, masked_fill_, gathers: ops/indexed.py) touches the
elements its index values name, known only when it runs: its access to `self` is issued
as a pending one (the whole view as superset) and resolved from the index values just
before the op runs (or, for an op that syncs, right after the sync).
"""

from __future__ import annotations

import torch

from ..errors import NotModelledError
from ..model import Site
from ..ops.indexed import indexed, pending_for, touched
from ..ops.ranges import layout_set, register_cache
from ..ops.schema import op_info
from .generators import draw_seed
from .tensor import DeviceTensor, view_of, view_of_unmoded

aten = torch.ops.aten


# --- metadata via meta tensors, cached by input layout ---------------------------

def _layout_key(value):
    if isinstance(value, torch.Tensor):
        if isinstance(value, DeviceTensor):  # _layout: no torch call, no function mode
            return ("D", value.dtype, value._layout, value._vs.block.nbytes)
        return ("C", value.dtype, tuple(value.shape), value.stride(), value.storage_offset())
    if isinstance(value, (list, tuple)):
        return tuple(_layout_key(v) for v in value)
    if isinstance(value, torch.device):
        return ("dev", str(value))
    return value


def _to_meta(value):
    if isinstance(value, DeviceTensor):
        base = torch.empty(value._vs.block.nbytes // value.dtype.itemsize, dtype=value.dtype,
                           device="meta")
        return base.as_strided(value.shape, value.stride(), value.storage_offset())
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return value  # CPU scalars mix with any device
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")
    if isinstance(value, (list, tuple)):
        return type(value)(_to_meta(v) for v in value)
    return value


class NeedsSync(Exception):
    """The op's outputs cannot be known before it runs."""


_META_CACHE: dict = {}


def output_layouts(func, args, kwargs) -> list:
    """[(size, stride, offset, dtype)] per output, from a meta run (cached)."""
    try:
        key = (func, _layout_key(args), _layout_key(tuple(sorted(kwargs.items()))))
        hash(key)
    except TypeError:
        key = None
    if key is not None:
        hit = _META_CACHE.get(key)
        if hit is not None:
            return hit
    meta_args = _to_meta(args)
    meta_kwargs = {k: _to_meta(v) for k, v in kwargs.items()}
    if "device" in meta_kwargs:
        meta_kwargs["device"] = "meta"
    try:
        out = func(*meta_args, **meta_kwargs)
    except (NotImplementedError, RuntimeError) as exc:
        if op_info(func).may_sync:
            raise NeedsSync() from exc
        raise NotModelledError(
            op_info(func).name, f"it has no meta kernel to compute its output shape "
            f"({str(exc).splitlines()[0][:200]})") from None
    outs = out if isinstance(out, (list, tuple)) else [out]
    # None: an optional output the op did not produce
    layouts = [None if o is None else (tuple(o.shape), o.stride(), o.storage_offset(), o.dtype)
               for o in outs]
    if key is not None:
        _META_CACHE[key] = layouts
    return layouts


# --- execution on the CPU buffers ----------------------------------------------

class Ref:
    """A device tensor's layout and block, captured at issue time. Queued work holds
    these, never the storage, so dropping the last tensor frees the block as on CUDA."""

    __slots__ = ("block", "dtype", "size", "stride", "offset")

    def __init__(self, t: DeviceTensor):
        self.block = t._vs.block
        self.dtype = t.dtype
        self.size, self.stride, self.offset = t._layout

    def view(self) -> torch.Tensor:
        return view_of(self.block, self.dtype, self.size, self.stride, self.offset)

    def unmoded_view(self) -> torch.Tensor:
        """view(), where torch function modes are disabled (materialize's callers)."""
        return view_of_unmoded(self.block, self.dtype, self.size, self.stride, self.offset)


def capture(value):
    """Replace device tensors by Refs and snapshot host tensors (their value now)."""
    if isinstance(value, DeviceTensor):
        return Ref(value)
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(capture(v) for v in value)
    return value


def materialize(value):
    """Refs to CPU views; called with torch function and dispatch modes disabled."""
    if isinstance(value, Ref):
        return value.unmoded_view()
    if isinstance(value, (list, tuple)):
        return type(value)(materialize(v) for v in value)
    return value


def run_captured(func, cargs, ckwargs, outs: list, seed: int | None):
    """Run an op on CPU views of the blocks; write non-aliasing results into `outs`."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
        args = materialize(cargs)
        kwargs = {k: materialize(v) for k, v in ckwargs.items()} if ckwargs else {}
        if "device" in kwargs:
            kwargs["device"] = torch.device("cpu")
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                result = func(*args, **kwargs)
        else:
            result = func(*args, **kwargs)
        results = result if isinstance(result, (list, tuple)) else [result]
        for ref, value in zip(outs, results):
            if ref is None:
                continue
            if value.numel() == 0 and tuple(value.shape) != tuple(ref.size):
                # The CPU kernel leaves it empty where the meta kernel sizes it (batch
                # norm's saved statistics in eval): unspecified, it stays uninitialised.
                continue
            ref.unmoded_view().copy_(value)  # modes are off: the method is the op


def issue(vd, func, args, kwargs, site: Site):
    """Issue one op with device-tensor arguments on vd's current stream."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    info = op_info(func)
    operands = info.operands(args, kwargs)
    host_inputs = []
    for name, t, _write in operands:
        if type(t) is not DeviceTensor and t.dim() > 0:
            if name != "indices":
                raise RuntimeError(
                    f"Expected all tensors to be on the same device, but found at least "
                    f"two devices, cuda:0 and cpu! (argument '{name}' of {info.name})")
            host_inputs.append(t)  # CPU index tensors are uploaded with the launch

    if info.is_empty:
        size, stride, offset, dtype = output_layouts(func, args, kwargs)[0]
        return vd.new_tensor(size, stride, offset, dtype, None, site, info.name)
    if info.metadata:
        return _metadata(func, args, kwargs)
    # An op that returns nothing (a custom op writing its Tensor(a!) arguments,
    # _foreach_add_) is asynchronous like any kernel; one returning a Python value syncs.
    if (info.n_returns and not info.returns_tensors) or info.syncs_with(args, kwargs):
        return issue_sync(vd, func, args, kwargs, site)
    try:
        layouts = output_layouts(func, args, kwargs) if info.n_returns else []
    except NeedsSync:
        return issue_sync(vd, func, args, kwargs, site)

    by_name = dict(zip(info.arg_names, args))
    by_name.update(kwargs)
    outputs, out_refs, accesses = [], [], []
    for i, layout in enumerate(layouts):
        if layout is None:
            outputs.append(None)
            out_refs.append(None)
            continue
        size, stride, offset, dtype = layout
        alias = info.output_alias(i)
        if alias is not None:
            base = by_name[alias]
            if isinstance(base, (list, tuple)):  # a list argument: output i aliases element i
                base = base[i] if i < len(base) else base[0]
            outputs.append(DeviceTensor(base._vs, size, stride, offset, dtype))
            out_refs.append(None)
        else:
            out = vd.new_tensor(size, stride, offset, dtype, None, site, info.name)
            outputs.append(out)
            out_refs.append(Ref(out))
            accesses.append(_access(out, True))

    if not info.is_view:
        if host_inputs:  # a pageable H2D copy: not permitted while the stream captures
            vd.graphs.forbid(f"upload of a CPU index tensor for {info.name}", stream=vd.current_stream)
        if info.seeded:
            vd.graphs.no_random(info.name)
        ix = indexed(func)
        pending = _operand_accesses(ix, operands, accesses)
        for t in host_inputs:
            vd.host_read(t, f"upload of {info.name} argument", site)
        seed = None
        if info.seeded:  # drawn now from the op's CUDA generator: no schedule dependence
            kwargs = dict(kwargs)
            seed = draw_seed(vd, kwargs)
        cargs = capture(args)
        ckwargs = {k: capture(v) for k, v in kwargs.items()} if kwargs else kwargs
        # Its layout now (in-place view ops change it later), never the tensor itself:
        # queued work must not keep the storage alive.
        if pending is not None:
            layout, itemsize = operands[0][1]._layout, operands[0][1].dtype.itemsize

        def run(pending=pending):  # a CUDA graph replay passes a fresh one (sim/graphs.py)
            __tracebackhide__ = True  # pytest: show the user's frames, not ours
            if pending is not None:  # the index values exist now, before the op uses them
                _resolve(vd.hb, ix, pending, layout, itemsize, cargs, ckwargs)
            run_captured(func, cargs, ckwargs, out_refs, seed)

        vd.launch(info.name, accesses, site, run)
    if info.returns_list:
        return outputs
    if info.n_returns == 1:
        return outputs[0]
    return tuple(outputs) if outputs else None


_SETS = register_cache({})  # (layout, byte range) -> (start, stop, region); the pair fixes the itemsize


def _access(t: DeviceTensor, is_write: bool):
    """The model access of a device tensor: its exact set of bytes."""
    key = (t._layout, t._range)
    hit = _SETS.get(key)
    if hit is None:
        if len(_SETS) >= 4096:
            _SETS.clear()
        size, stride, offset = t._layout
        hit = _SETS[key] = layout_set(size, stride, offset, t.dtype.itemsize)
    start, stop, region = hit
    if region is None:
        return (t._vs.alloc, start, stop, is_write)
    return (t._vs.alloc, region, is_write)


def _operand_accesses(ix, operands, accesses: list):
    """Append the accesses of an op's device-tensor operands; for an indexed op, the
    one to its first argument is pending. Returns that Pending, or None."""
    pending = None
    for i, (_name, t, write) in enumerate(operands):
        if not isinstance(t, DeviceTensor):
            continue
        if i == 0 and ix is not None:
            size, stride, offset = t._layout
            pending = pending_for(size, stride, offset, t.dtype.itemsize)
            accesses.append((t._vs.alloc, pending, write))
        else:
            accesses.append(_access(t, write))
    return pending


def _resolve(hb, ix, pending, layout, itemsize: int, cargs, ckwargs) -> None:
    """Resolve an indexed op's pending access from its index values as they are now
    (only the index tensors are read; the other captured arguments give dims)."""
    ckwargs = ckwargs or {}
    with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
        values = [materialize(v) for v in ix.index_tensors(cargs, ckwargs)]
        size, stride, offset = layout
        exact = touched(ix, size, stride, offset, itemsize, values, cargs, ckwargs)
    hb.resolve(pending, exact)


def _metadata(func, args, kwargs):
    """A query of metadata only (is_same_size, sym_numel, ...): answered from the
    layouts, no device work and no sync, as on CUDA."""
    with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
        return func(*_to_meta(args), **{k: _to_meta(v) for k, v in kwargs.items()})


def issue_sync(vd, func, args, kwargs, site: Site):
    """An op that hands data to the host: the host waits for the current stream, then it
    runs now."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    info = op_info(func)
    stream = vd.current_stream
    ix = indexed(func)
    operands = info.operands(args, kwargs)
    accesses = []
    pending = _operand_accesses(ix, operands, accesses)
    vd.launch(info.name, accesses, site, None)
    vd.sync_stream(stream)
    if pending is not None:  # the stream ran up to here: the index values are final
        target = operands[0][1]
        _resolve(vd.hb, ix, pending, target._layout, target.dtype.itemsize, capture(args),
                 {k: capture(v) for k, v in kwargs.items()})
        vd.hb.flush()
    with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
        cargs, ckwargs = materialize(capture(args)), {k: materialize(capture(v)) for k, v in kwargs.items()}
        result = func(*cargs, **ckwargs)
    if not isinstance(result, (torch.Tensor, list, tuple)):
        return result
    results = result if isinstance(result, (list, tuple)) else [result]
    outs = []
    for r in results:
        if not isinstance(r, torch.Tensor):
            outs.append(r)
            continue
        # The op has already run and the host waited for it: its output is written now,
        # ordered before anything the host issues next.
        out = vd.new_tensor(tuple(r.shape), r.stride(), 0, r.dtype, None, site, info.name)
        with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
            aten.copy_.default(out.cpu_view(), r)
        outs.append(out)
    if isinstance(result, torch.Tensor):
        return outs[0]
    return type(result)(outs) if isinstance(result, tuple) else outs
