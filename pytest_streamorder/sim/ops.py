"""How one aten op runs on the virtual device.

An op on device tensors is *issued*: its output layout comes from running it on meta
tensors (cached by input layout), its outputs get fresh storage from the caching
allocator, the model is told its reads and writes (from the op's schema), and a
closure that runs it on the CPU buffers is queued on the current stream. Ops whose
output shape depends on data (nonzero, masked indexing, item) or that return a Python
value cannot be issued ahead: like on a GPU, they copy on the current stream and make
the host wait for that stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..model import Site
from .tensor import DeviceTensor, byte_range, view_of

if TYPE_CHECKING:
    from .device import VirtualDevice

aten = torch.ops.aten

# Ops that only allocate: their output is uninitialised memory (poison), no device work.
EMPTY_OPS = {
    aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
    aten.new_empty.default, aten.new_empty_strided.default,
}

# Ops whose output shape or value depends on device data: a GPU syncs for these too.
DATA_DEPENDENT = {
    aten.nonzero.default, aten.masked_select.default, aten.bincount.default,
    aten._unique2.default, aten.unique_consecutive.default, aten.unique_dim.default,
    aten.equal.default, aten.repeat_interleave.Tensor, aten.is_nonzero.default,
    aten._local_scalar_dense.default, aten.item.default, aten.index.Tensor,
}


class OpSchema:
    """What the schema says about one op: which arguments it writes, which outputs alias
    which argument, and whether it is a pure view (no device work at all)."""

    __slots__ = ("name", "args", "written", "returns_alias", "returns_tensors", "is_view",
                 "seeded", "returns_list", "n_returns")

    def __init__(self, func):
        schema = func._schema
        self.name = f"aten.{schema.name.split('::')[-1]}" + \
            (f".{schema.overload_name}" if schema.overload_name else "")
        self.args = [a.name for a in schema.arguments]
        self.written = {a.name for a in schema.arguments
                        if a.alias_info is not None and a.alias_info.is_write}
        alias_of = {}
        for a in schema.arguments:
            if a.alias_info is not None:
                for s in a.alias_info.before_set:
                    alias_of.setdefault(s, a.name)
        self.returns_alias = []  # per return: the argument name it aliases, or None
        for r in schema.returns:
            name = None
            if r.alias_info is not None:
                for s in r.alias_info.before_set:
                    name = alias_of.get(s, name)
            self.returns_alias.append(name)
        self.returns_tensors = all(
            str(r.type) in ("Tensor", "List[Tensor]", "Tensor[]") for r in schema.returns)
        self.is_view = (bool(schema.returns) and not self.written
                        and all(a is not None for a in self.returns_alias))
        self.seeded = torch.Tag.nondeterministic_seeded in func.tags
        self.n_returns = len(schema.returns)
        self.returns_list = self.n_returns == 1 and \
            str(schema.returns[0].type) in ("List[Tensor]", "Tensor[]")


_SCHEMAS: dict = {}


def schema_of(func) -> OpSchema:
    s = _SCHEMAS.get(func)
    if s is None:
        s = _SCHEMAS[func] = OpSchema(func)
    return s


def bind(schema: OpSchema, args, kwargs) -> list[tuple[str, Any]]:
    """(argument name, value) for every argument given."""
    bound = list(zip(schema.args, args))
    bound.extend(kwargs.items())
    return bound


def tensors_in(value) -> list:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


# --- metadata via meta tensors, cached by input layout ---------------------------

def _layout_key(value):
    if isinstance(value, torch.Tensor):
        if isinstance(value, DeviceTensor):
            return ("D", value.dtype, tuple(value.shape), value.stride(), value.storage_offset(),
                    value._vs.block.nbytes)
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
        if func in DATA_DEPENDENT or torch.Tag.dynamic_output_shape in func.tags \
                or torch.Tag.data_dependent_output in func.tags:
            raise NeedsSync() from exc
        raise NotImplementedError(
            f"{schema_of(func).name} cannot run on the virtual device: it has no meta "
            f"kernel to compute its output shape ({str(exc).splitlines()[0][:200]})") from None
    outs = out if isinstance(out, (list, tuple)) else [out]
    layouts = [(tuple(o.shape), o.stride(), o.storage_offset(), o.dtype) for o in outs]
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
    if isinstance(value, Ref):
        return value.view()
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
            if ref is not None:
                aten.copy_.default(ref.view(), value)


def describe_tensor(t: torch.Tensor) -> str:
    return f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}"


def issue(vd: "VirtualDevice", func, args, kwargs, site: Site):
    """Issue one op with device-tensor arguments on the current stream."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    schema = schema_of(func)
    bound = bind(schema, args, kwargs)
    host_inputs = []
    for name, value in bound:
        for t in tensors_in(value):
            if type(t) is not DeviceTensor and t.dim() > 0:
                if name != "indices":
                    raise RuntimeError(
                        f"Expected all tensors to be on the same device, but found at least "
                        f"two devices, cuda:0 and cpu! (argument '{name}' of {schema.name})")
                host_inputs.append(t)  # CPU index tensors are uploaded with the launch

    if func in EMPTY_OPS:
        size, stride, offset, dtype = output_layouts(func, args, kwargs)[0]
        return vd.new_tensor(size, stride, offset, dtype, f"{schema.name} {dtype}", site)

    if not schema.returns_tensors:
        return issue_sync(vd, func, args, kwargs, site)
    try:
        layouts = output_layouts(func, args, kwargs) if func._schema.returns else []
    except NeedsSync:
        return issue_sync(vd, func, args, kwargs, site)

    by_name = dict(bound)
    aliases = schema.returns_alias * len(layouts) if schema.returns_list else schema.returns_alias
    outputs, out_refs, accesses = [], [], []
    for (size, stride, offset, dtype), alias in zip(layouts, aliases):
        if alias is not None:
            base = by_name[alias]
            if isinstance(base, (list, tuple)):  # e.g. unbind/split: views of one tensor
                base = base[0]
            outputs.append(DeviceTensor(base._vs, size, stride, offset, dtype))
            out_refs.append(None)
        else:
            out = vd.new_tensor(size, stride, offset, dtype, None, site, schema.name)
            outputs.append(out)
            out_refs.append(Ref(out))
            accesses.append(_access(out, True))

    if not schema.is_view:
        written = schema.written
        for name, value in bound:
            if isinstance(value, DeviceTensor):
                accesses.append(_access(value, name in written))
            elif isinstance(value, (list, tuple)):
                for t in value:
                    if isinstance(t, DeviceTensor):
                        accesses.append(_access(t, name in written))
        for t in host_inputs:
            vd.host_read(t, f"upload of {schema.name} argument", site)
        seed = int(torch.randint(0, 2**62, ())) if schema.seeded else None
        cargs = capture(args)
        ckwargs = {k: capture(v) for k, v in kwargs.items()} if kwargs else kwargs
        vd.launch(schema.name, accesses, site,
                  lambda: run_captured(func, cargs, ckwargs, out_refs, seed))
    if schema.returns_list:
        return outputs
    if schema.n_returns == 1:
        return outputs[0]
    return tuple(outputs) if outputs else None


def _access(t: DeviceTensor, is_write: bool):
    start, stop = t._range
    return (t._vs.alloc, start, stop, is_write)


def issue_sync(vd: "VirtualDevice", func, args, kwargs, site: Site):
    """A data-dependent op: the host waits for the current stream, then it runs now."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    schema = schema_of(func)
    stream = vd.current_stream
    accesses = []
    for name, value in bind(schema, args, kwargs):
        for t in tensors_in(value):
            if isinstance(t, DeviceTensor):
                accesses.append(_access(t, name in schema.written))
    vd.launch(schema.name, accesses, site, None)
    vd.sync_stream(stream)
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
        out = vd.new_tensor(tuple(r.shape), r.stride(), 0, r.dtype, None, site, schema.name)
        with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
            aten.copy_.default(out.cpu_view(), r)
        outs.append(out)
    if isinstance(result, torch.Tensor):
        return outs[0]
    return type(result)(outs) if isinstance(result, tuple) else outs
