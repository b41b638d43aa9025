"""How one aten op runs on the virtual device.

An op on device tensors is *issued*: its output layout comes from running it on meta
tensors, its outputs get fresh storage from the caching allocator, the model is told its
reads and writes (from the op's schema), and a closure that runs it on the CPU buffers
is queued on the current stream. All that depends only on the op and its arguments'
kinds, dtypes, layouts and Python scalars is worked out once per such key (a Plan, see
"issue plans" below) and applied per call. A pointwise op (and clone, index, gather)
computes straight into its output block with its out= variant; other ops compute, then
copy into the block. Ops whose
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
from ..model import Pending, Site
from ..ops.indexed import indexed, pending_for, touched
from ..ops.ranges import contiguous_strides, extent, layout_set, register_cache
from ..ops.schema import op_info
from .generators import draw_seed
from .tensor import RESIZE_ROOM, DeviceTensor, view_of, view_of_unmoded

aten = torch.ops.aten
is_inference_mode_enabled = torch.is_inference_mode_enabled


# --- metadata via meta tensors, cached by input layout ---------------------------

def _layout_key(value):
    """What of an argument can change an op's outputs or accesses: a tensor's kind,
    dtype and layout (never its values); a Python number's type with its value (x * 2
    and x * 2.0 differ in output dtype, and 1 == 1.0 == True for a dict)."""
    cls = type(value)
    if cls is DeviceTensor:  # _layout: no torch call, no function mode
        return ("D", value.dtype, value._layout, value._vs.block.nbytes)
    if cls is int or value is None or cls is str:
        return value
    if isinstance(value, torch.Tensor):
        if isinstance(value, DeviceTensor):
            return ("D", value.dtype, value._layout, value._vs.block.nbytes)
        return ("C", value.dtype, tuple(value.shape), value.stride(), value.storage_offset())
    if isinstance(value, (list, tuple)):
        return (cls, *[_layout_key(v) for v in value])
    if isinstance(value, torch.device):
        return ("dev", str(value))
    return (cls, value)  # anything else (dtypes, memory formats, NumPy scalars): typed too


def _call_key(func, args, kwargs):
    """The cache key of a call (None: not hashable, e.g. a SymInt argument)."""
    try:
        key = (func, tuple([_layout_key(v) for v in args]),
               tuple([(k, _layout_key(v)) for k, v in sorted(kwargs.items())]) if kwargs else ())
        hash(key)
    except TypeError:
        return None
    return key


def _stand_in(value, device: str = "meta"):
    """A tensor argument as a stand-in of the same layout on `device` (meta: no data;
    cpu: zeros, for the error path below); other values as they are."""
    make = torch.empty if device == "meta" else torch.zeros
    if isinstance(value, DeviceTensor):
        base = make(value._vs.block.nbytes // value.dtype.itemsize, dtype=value.dtype,
                    device=device)
        return base.as_strided(value.shape, value.stride(), value.storage_offset())
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return value  # CPU scalars mix with any device
        return make(value.shape, dtype=value.dtype, device=device).as_strided(
            value.shape, value.stride())
    if isinstance(value, (list, tuple)):
        return type(value)(_stand_in(v, device) for v in value)
    return value


def _host_error(func, args, kwargs) -> RuntimeError | None:
    """The error the op raises on host stand-ins of its arguments (zeros, same layouts),
    or None. The meta kernel rejected the call; CUDA's argument checks word their errors
    as the CPU kernels do (meta kernels often do not), and raising the CPU's text keeps
    `pytest.raises(RuntimeError, match=...)` of the user's suite meaningful."""
    host_kwargs = {k: _stand_in(v, "cpu") for k, v in kwargs.items()}
    if "device" in host_kwargs:
        host_kwargs["device"] = "cpu"
    try:
        with torch.utils._mode_utils.no_dispatch():
            func(*_stand_in(args, "cpu"), **host_kwargs)
    except NotImplementedError:
        return None
    except RuntimeError as exc:
        return exc
    return None


class NeedsSync(Exception):
    """The op's outputs cannot be known before it runs."""


_META_CACHE: dict = {}


def output_layouts(func, args, kwargs) -> list:
    """[(size, stride, offset, dtype)] per output, from a meta run (cached)."""
    key = _call_key(func, args, kwargs)
    if key is not None:
        hit = _META_CACHE.get(key)
        if hit is not None:
            return hit
    meta_args = _stand_in(args)
    meta_kwargs = {k: _stand_in(v) for k, v in kwargs.items()}
    if "device" in meta_kwargs:
        meta_kwargs["device"] = "meta"
    try:
        out = func(*meta_args, **meta_kwargs)
    except (NotImplementedError, RuntimeError) as exc:
        if op_info(func).may_sync:
            raise NeedsSync() from exc
        if not isinstance(exc, NotImplementedError):
            # The meta kernel rejected the arguments (shapes, dtypes). When the CPU kernel
            # rejects them too, it is the user's error, as CUDA would raise it.
            host = _host_error(func, args, kwargs)
            if host is not None:
                raise host.with_traceback(None) from None
        raise NotModelledError(
            op_info(func).name, f"it has no meta kernel to compute its output shape "
            f"({str(exc).splitlines()[0][:200]})") from None
    outs = out if isinstance(out, (list, tuple)) else [out]
    # None: an optional output the op did not produce
    layouts = [None if o is None else (tuple(o.shape), o.stride(), o.storage_offset(), o.dtype)
               for o in outs]
    if key is not None:
        if len(_META_CACHE) >= 4096:
            _META_CACHE.clear()
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
        """view(), where torch function modes are disabled (materialize's callers). The
        block keeps the views its queued work used (a loop uses the same few layouts);
        keyed with the inference mode too, which marks the views made under it."""
        block = self.block
        key = (self.dtype, self.size, self.stride, self.offset, is_inference_mode_enabled())
        views = block.views
        view = views.get(key)
        if view is None:
            if len(views) >= 8:
                views.clear()
            view = views[key] = view_of_unmoded(block, self.dtype, self.size, self.stride,
                                                self.offset)
        return view


def capture(value):
    """Replace device tensors by Refs and snapshot host tensors (their value now)."""
    cls = type(value)
    if cls is tuple:  # the positional arguments: one loop, no recursion for the common kinds
        out = []
        for v in value:
            c = type(v)
            out.append(Ref(v) if c is DeviceTensor else v if c is int or c is float or v is None
                       else capture(v))
        return tuple(out)
    if cls is DeviceTensor:
        return Ref(value)
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
            if tuple(value.shape) != tuple(ref.size) and (value.numel() == 0 or 0 in ref.size):
                # The CPU kernel leaves it empty where the meta kernel sizes it (batch
                # norm's saved statistics in eval): unspecified, it stays uninitialised;
                # or the other way round (embedding_bag's unused outputs): nothing to write.
                continue
            ref.unmoded_view().copy_(value)  # modes are off: the method is the op


def run_into(out_func, cargs, ckwargs, ref: Ref) -> None:
    """Run an op's out= variant straight into its output block (no result to copy)."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
        args = materialize(cargs)
        kwargs = {k: materialize(v) for k, v in ckwargs.items()} if ckwargs else {}
        kwargs["out"] = ref.unmoded_view()
        out_func(*args, **kwargs)


# Ops computed straight into their output block with their out= variant: those whose
# every output element is computed on its own (pointwise), so the output's strides
# cannot change a value, and a few copies and gathers.
_INTO_OPS = {aten.clone.default, aten.index.Tensor, aten.index_select.default,
             aten.gather.default}


def _out_variant(func, info, outs):
    """The out= overload that computes `func` into a preallocated output with the same
    values, or None: one fresh, contiguous output; no seed, no device argument."""
    if len(outs) != 1 or outs[0] is None or outs[0][0] is not None or info.seeded \
            or "device" in info.arg_names:
        return None
    if func not in _INTO_OPS and torch.Tag.pointwise not in func.tags:
        return None
    _w, size, stride, _offset, _dtype = outs[0][:5]
    if tuple(stride) != contiguous_strides(size):
        return None
    packet, name = func.overloadpacket, func._overloadname
    schema_args = [(a.name, str(a.type)) for a in func._schema.arguments]
    for candidate in (f"{name}_out", "out") if name != "default" else ("out",):
        out_func = getattr(packet, candidate, None)
        if out_func is None:
            continue
        args = out_func._schema.arguments
        if [(a.name, str(a.type)) for a in args[:-1]] == schema_args and args[-1].name == "out" \
                and len(out_func._schema.returns) == 1:
            return out_func
    return None


# --- issue plans ----------------------------------------------------------------------
#
# Everything issue() derives from an op and its arguments' kinds, dtypes and layouts
# (and the Python scalars, by type and value) is the same at every call with the same
# key (_call_key): what kind of call it is, the output layouts, which outputs alias which
# argument, where each device operand sits, and the exact byte set of each access
# relative to its tensor's storage. A Plan keeps that; a call applies it with a few
# tuple operations, taking only the per-call objects from the arguments (storages and
# their model allocations). What depends on values stays per call: an indexed op's
# pending access (a fresh Pending, resolved from the index values when it runs), the
# seed of a random op, metadata queries (answered from the call itself), and syncing
# calls (issue_sync).

ASYNC, EMPTY, METADATA, SYNC = range(4)
# What an output aliasing an argument is: a view of it, that argument itself (an
# in-place or out= op), or a zero-size out= the op resizes (RESIZE, with its new bytes).
VIEW, ITSELF, RESIZE = "view", "itself", "resize"


class Plan:
    """How calls with one key are issued (built once by _build_plan)."""

    __slots__ = ("info", "kind", "outs", "operands", "host_inputs", "ix", "pending_set",
                 "launches", "seeded", "single", "out_func")

    def __init__(self, info, kind: int):
        self.info = info
        self.kind = kind
        # per output: None (not produced), (where, size, stride, offset, dtype, how) for
        # an output aliasing the argument at `where` (how: VIEW, ITSELF or RESIZE's tuple
        # (RESIZE, nbytes, start, stop, region)), or (None, size, stride, offset, dtype, nbytes,
        # start, stop, region) for fresh memory the op writes
        self.outs: tuple = ()
        # per device operand, in operands() order: (where, is_write, start, stop, region)
        self.operands: tuple = ()
        self.host_inputs: tuple = ()  # where the CPU index tensors are (uploaded)
        self.ix = None  # ops/indexed.py: its first operand's access is pending
        self.pending_set = None  # (start, stop, region) superset of that pending access
        self.launches = False  # not a view: device work is queued
        self.seeded = False
        self.single = False  # returns one tensor (not a list or tuple)
        self.out_func = None  # its out= variant, run straight into the output block


def _operand_places(info, args, kwargs) -> list:
    """(where, name, tensor, is_write) per tensor argument, in info.operands() order;
    `where` = (position or keyword, list element or -1) finds it in a later call's
    arguments (by position: one tensor given twice is two operands)."""
    out = []
    n = len(args)
    for pos, name, write, is_list in info.args:
        at = pos if pos < n else name
        v = args[pos] if pos < n else kwargs.get(name)
        if v is None:
            continue
        if is_list:
            for j, t in enumerate(v):
                if isinstance(t, torch.Tensor):
                    out.append(((at, j), name, t, write))
        elif isinstance(v, torch.Tensor):
            out.append(((at, -1), name, v, write))
    return out


def _at(args, kwargs, where):
    pos, j = where
    v = args[pos] if pos.__class__ is int else kwargs[pos]
    return v if j < 0 else v[j]


def _build_plan(func, args, kwargs) -> Plan:
    """What issue() does with a call of this key, worked out once (the slow path)."""
    info = op_info(func)
    operands = _operand_places(info, args, kwargs)
    host_inputs = []
    for where, name, t, _write in operands:
        if type(t) is not DeviceTensor and t.dim() > 0:
            if name != "indices":
                raise RuntimeError(
                    f"Expected all tensors to be on the same device, but found at least "
                    f"two devices, cuda:0 and cpu! (argument '{name}' of {info.name})")
            host_inputs.append(where)  # CPU index tensors are uploaded with the launch
    if info.is_empty:
        plan = Plan(info, EMPTY)
        size, stride, offset, dtype = output_layouts(func, args, kwargs)[0]
        plan.outs = ((None, size, stride, offset, dtype, _nbytes(size, stride, offset, dtype)),)
        return plan
    if info.metadata:
        return Plan(info, METADATA)
    # An op that returns nothing (a custom op writing its Tensor(a!) arguments,
    # _foreach_add_) is asynchronous like any kernel; one returning a Python value syncs.
    if (info.n_returns and not info.returns_tensors) or info.syncs_with(args, kwargs):
        return Plan(info, SYNC)
    try:
        layouts = output_layouts(func, args, kwargs) if info.n_returns else []
    except NeedsSync:
        return Plan(info, SYNC)
    plan = Plan(info, ASYNC)
    outs = []
    for i, layout in enumerate(layouts):
        if layout is None:
            outs.append(None)
            continue
        size, stride, offset, dtype = layout
        alias = info.output_alias(i)
        if alias is not None:
            pos = info.arg_names.index(alias)
            at = alias if alias in kwargs or pos >= len(args) else pos
            base = kwargs[alias] if at == alias else args[pos]
            j = -1
            if isinstance(base, (list, tuple)):  # a list argument: output i aliases element i
                j = i if i < len(base) else 0
            # An in-place or out= op returns the argument it wrote, unchanged in layout:
            # that very tensor (torch's bindings return it anyway), not a fresh wrapper.
            written = j < 0 and alias in info.written and type(base) is DeviceTensor
            how = VIEW
            if written and base._layout == (tuple(size), tuple(stride), offset) and \
                    base.dtype == dtype:
                how = ITSELF
            elif written:
                nbytes = _nbytes(size, stride, offset, dtype)
                if base._vs.block.nbytes or 0 not in base._layout[0] or nbytes > RESIZE_ROOM \
                        or base.dtype != dtype:
                    _refuse_resize(info, base, size)
                how = (RESIZE, nbytes, *layout_set(tuple(size), tuple(stride), offset,
                                                   dtype.itemsize))
            outs.append(((at, j), size, stride, offset, dtype, how))
        else:
            outs.append((None, size, stride, offset, dtype, _nbytes(size, stride, offset, dtype),
                         *layout_set(tuple(size), tuple(stride), offset, dtype.itemsize)))
    plan.outs = tuple(outs)
    plan.launches = not info.is_view
    plan.out_func = _out_variant(func, info, plan.outs) if plan.launches else None
    plan.seeded = info.seeded
    plan.single = not info.returns_list and info.n_returns == 1
    plan.host_inputs = tuple(host_inputs)
    plan.ix = indexed(func)
    ops = []
    for i, (where, _name, t, write) in enumerate(operands):
        if not isinstance(t, DeviceTensor):
            continue
        size, stride, offset = t._layout
        tset = layout_set(size, stride, offset, t.dtype.itemsize)
        if i == 0 and plan.ix is not None:
            plan.pending_set = tset  # the superset; a fresh Pending per call
        ops.append((where, write, *tset))
    plan.operands = tuple(ops)
    return plan


def _refuse_resize(info, out: DeviceTensor, size) -> None:
    """The op would change the layout of a non-empty tensor it writes: CUDA resizes an
    out= tensor of another shape to the result's (reallocating a storage too small for
    it; deprecated for non-empty ones). The virtual device models that only for a
    zero-size out= with bytes of its own (RESIZE); going on here would leave the user's
    tensor in its old shape, its values cut short or padded with poison: a silent wrong
    path. (In-place view ops, t_() and the like, have their own handler.)"""
    raise NotModelledError(
        f"{info.name} resizing its out= tensor from {tuple(out.shape)} to {tuple(size)}",
        "CUDA resizes an out= tensor whose shape differs from the result's; the virtual "
        "device models that for a fresh zero-size out= only: pass an out= tensor of the "
        "result's shape, or torch.empty(0, device='cuda')")


def _nbytes(size, stride, offset, dtype) -> int:
    return extent(size, stride, offset, dtype.itemsize)[1]


_PLANS: dict = register_cache({})  # _call_key -> Plan (cleared with the sets: set_exact)


def issue(vd, func, args, kwargs, site: Site):
    """Issue one op with device-tensor arguments on vd's current stream."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    key = _call_key(func, args, kwargs)
    plan = _PLANS.get(key) if key is not None else None
    if plan is None:
        plan = _build_plan(func, args, kwargs)
        if key is not None:
            if len(_PLANS) >= 4096:
                _PLANS.clear()
            _PLANS[key] = plan
    kind = plan.kind
    if kind is not ASYNC:
        if kind is EMPTY:
            _w, size, stride, offset, dtype, nbytes = plan.outs[0]
            return vd.new_tensor(size, stride, offset, dtype, None, site, plan.info.name, nbytes)
        if kind is METADATA:
            return _metadata(func, args, kwargs)
        return issue_sync(vd, func, args, kwargs, site)

    info = plan.info
    outputs, out_refs, accesses = [], [], []
    for out in plan.outs:
        if out is None:
            outputs.append(None)
            out_refs.append(None)
        elif out[0] is not None:  # a view of an argument, or the argument it wrote
            where, size, stride, offset, dtype, how = out
            base = _at(args, kwargs, where)
            if how is VIEW:
                outputs.append(DeviceTensor(base._vs, size, stride, offset, dtype))
                out_refs.append(None)
            elif how is ITSELF:
                outputs.append(base)
                out_refs.append(None)
            else:  # a zero-size out= that CUDA resizes: fresh memory the op writes
                _resize, nbytes, start, stop, region = how
                vd.resize_empty(base, size, stride, offset, nbytes, site, info.name)
                outputs.append(base)
                out_refs.append(Ref(base))
                alloc = base._vs.alloc
                accesses.append((alloc, start, stop, True) if region is None else (alloc, region, True))
        else:
            _w, size, stride, offset, dtype, nbytes, start, stop, region = out
            t = vd.new_tensor(size, stride, offset, dtype, None, site, info.name, nbytes)
            outputs.append(t)
            out_refs.append(Ref(t))
            alloc = t._vs.alloc
            accesses.append((alloc, start, stop, True) if region is None else (alloc, region, True))

    if plan.launches:
        if plan.host_inputs:  # a pageable H2D copy: not permitted while the stream captures
            vd.graphs.forbid(f"upload of a CPU index tensor for {info.name}", stream=vd.current_stream)
        if plan.seeded:
            vd.graphs.no_random(info.name)
        ix = plan.ix
        pending = None
        operands = plan.operands
        if plan.pending_set is not None:  # its first operand's: a fresh Pending per call
            target = _at(args, kwargs, operands[0][0])
            pending = Pending(*plan.pending_set)
            accesses.append((target._vs.alloc, pending, operands[0][1]))
            # Its layout now (in-place view ops change it later), never the tensor
            # itself: queued work must not keep the storage alive.
            layout, itemsize = target._layout, target.dtype.itemsize
            operands = operands[1:]
        for where, write, start, stop, region in operands:
            alloc = _at(args, kwargs, where)._vs.alloc
            if region is None:
                accesses.append((alloc, start, stop, write))
            else:
                accesses.append((alloc, region, write))
        for where in plan.host_inputs:
            vd.host_read(_at(args, kwargs, where), f"upload of {info.name} argument", site)
        seed = None
        if plan.seeded:  # drawn now from the op's CUDA generator: no schedule dependence
            kwargs = dict(kwargs)
            seed = draw_seed(vd, kwargs)
        cargs = capture(args)
        ckwargs = {k: capture(v) for k, v in kwargs.items()} if kwargs else kwargs

        out_func = plan.out_func

        def run(pending=pending):  # a CUDA graph replay passes a fresh one (sim/graphs.py)
            __tracebackhide__ = True  # pytest: show the user's frames, not ours
            if pending is not None:  # the index values exist now, before the op uses them
                _resolve(vd.hb, ix, pending, layout, itemsize, cargs, ckwargs)
            if out_func is not None:
                run_into(out_func, cargs, ckwargs, out_refs[0])
            else:
                run_captured(func, cargs, ckwargs, out_refs, seed)

        vd.launch(info.name, accesses, site, run)
    if plan.single:
        return outputs[0]
    if info.returns_list:
        return outputs
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
        return func(*_stand_in(args), **{k: _stand_in(v) for k, v in kwargs.items()})


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
