"""Where torch calls enter the virtual device.

- `handle` is the one description of what a torch call does on the device: factories
  with device="cuda", .cuda()/.to(), pinned memory, record_stream, tolist/numpy/repr,
  host accesses to pinned tensors, and the few methods whose C++ installs a CUDA device
  guard before dispatch (GUARDED: their common forms, basic and tensor indexing, copy_,
  item()/bool()/int()/float(), issue the aten ops C++ would, straight to `dispatch`;
  the rest get a cpu-device twin). It is reached from
  - DeviceTensor.__torch_function__ (`device_function`): every call with a device tensor
    argument, in any thread;
  - the entry points patched while attached (entry_points.py): factories by device,
    pin_memory=True, .cuda()/.to()/.pin_memory()/.is_pinned()/.numpy() of host tensors;
  - a TorchFunctionMode, pushed in the owner thread only while host-only calls need it
    (`arm`/`relax`/`settle`: while a stream's access to pinned memory is in flight, the
    host not yet synced past it, or once the owner started threads), and a ThreadMode
    in other threads (threads.py). A host access to pinned memory while nothing is in
    flight can race with nothing (earlier stream accesses are ordered before it, later
    ones after it), so it is left out. A no-op Python mode alone costs 1.68x on
    host-heavy code, so with neither, host calls never enter Python.
- Every aten op with a device tensor argument then reaches `dispatch` through the
  device tensor's __torch_dispatch__: it is issued to a stream (issue.py), and copies
  between host and device follow CUDA's copy rules.
"""

from __future__ import annotations

import math

import torch
from torch.overrides import TorchFunctionMode

from ..errors import NotModelledError
from ..host_threads import RUNTIME_LOCK
from ..model import Site
from ..ops.custom import refuse_without_cpu_kernel
from ..ops.host import call_name, host_access_specs, host_result, pinned_operands
from ..ops.ranges import contiguous_strides, tensor_access
from . import runtime
from .issue import Ref, _access, issue, output_layouts
from . import threads
from .generators import check_generator_arg, cuda_generator_arg
from .pinned_allocator import download_queued, pinned_like, upload_queued
from .runtime import active_device, current
from .storage import VirtualTypedStorage, VirtualUntypedStorage, reduce_device_tensor, saving
from .streams import VirtualStream
from . import entry_points
from .tensor import DeviceTensor, Twin, set_dispatch, set_function

aten = torch.ops.aten
T = torch.Tensor

# Methods whose C++ sets a CUDA device guard before any mode sees the op.
GUARDED = {
    T.__getitem__, T.__setitem__, T.copy_, T.contiguous, T.nonzero, torch.nonzero,
    T.__int__, T.__float__, T.__complex__, T.__index__, T.__invert__, T.new_tensor,
    T.__bool__, T.item,
}

# Factories that copy host data to the device: a blocking H2D copy.
UPLOAD_FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray}
RANDOM_FACTORIES = {torch.rand, torch.randn, torch.randint, torch.randperm, torch.normal,
                    torch.rand_like, torch.randn_like, torch.randint_like}
EMPTY_FACTORIES = {torch.empty, torch.empty_like, torch.empty_strided, T.new_empty,
                   T.new_empty_strided}


def _is_cuda(device) -> bool:
    if device is None:
        return False
    if isinstance(device, int):
        return True
    dev = device if isinstance(device, torch.device) else torch.device(device)
    if dev.type == "cuda" and (dev.index or 0) != 0:
        raise ValueError(f"the virtual device has one GPU (cuda:0); got device {device!r}")
    return dev.type == "cuda"


def _has_device_tensor(args, kwargs) -> bool:
    # Plain loops, no generators: this runs on every indexing call, host ones included.
    for v in args:
        if isinstance(v, DeviceTensor):
            return True
        if isinstance(v, (list, tuple)):
            for x in v:
                if isinstance(x, DeviceTensor):
                    return True
    for v in kwargs.values():
        if isinstance(v, DeviceTensor):
            return True
    return False


def _grad_on_device(args, kwargs) -> bool:
    """A CUDA tensor that requires grad among the arguments (device tensors, and any
    tensor claiming device cuda: the guard-less path must refuse both)."""
    def hit(x):
        return isinstance(x, torch.Tensor) and x.requires_grad and x.device.type == "cuda"

    for v in (*args, *kwargs.values()):
        if hit(v) or (isinstance(v, (list, tuple)) and any(hit(x) for x in v)):
            return True
    return False


def _twin(v):
    if isinstance(v, DeviceTensor):
        return Twin(v)
    if isinstance(v, (list, tuple)):
        return type(v)(_twin(x) for x in v)
    return v


def _untwin(v):
    if isinstance(v, Twin):
        return v._dt
    if isinstance(v, (list, tuple)) and any(isinstance(x, Twin) for x in v):
        return type(v)(_untwin(x) for x in v)
    return v


def _guarded_call(vd, func, args, kwargs):
    """Call a GUARDED method with twins in place of device tensors. What C++ hands back
    as `self` (copy_ and other in-place methods, contiguous() of a contiguous tensor) is
    the twin: the caller gets the device tensor itself, so `dst.copy_(src) is dst`.
    The common forms (basic indexing, copy_ into a device tensor) skip the twin: see
    DIRECT."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    direct = DIRECT.get(func)
    if direct is not None:
        with _BELOW_AUTOGRAD_KERNELS():  # what a twin's op ran under (see below)
            out = direct(vd, args, kwargs)
        if out is not _TWIN:
            return out
    return _untwin(func(*_twin(args), **{k: _twin(v) for k, v in kwargs.items()}))


# --- guarded calls without a twin ---------------------------------------------------
#
# A twin costs a wrapper tensor per device argument, C++'s argument parsing and indexing
# machinery, and a dispatch back into Python per aten op (x[0]: 12.4 us, against 5.2 us
# for the select itself). For the forms below, the aten ops C++ would dispatch (the same
# ops, arguments and order: python_variable_indexing.cpp, ATen/TensorIndexing.h) go to
# `dispatch` directly, with one site for the call. Anything else, and every form C++
# would reject (its error text is C++'s), takes the twin path before any op is issued.
# The site is captured one frame above `_guarded_call` (the direct function's frame
# stands where the twin's __torch_dispatch__ did), so it holds the same user frames.
# Difference: a view made here is not an autograd view (`_base` is None); through a twin
# its `_base` was the discarded twin. Version counters behave as through a twin.

_TWIN = object()  # a direct function's answer: take the twin path
# Through a twin, every op reached Python under this guard (set by C++'s autograd and
# ADInplaceOrView kernels on the way): a host tensor's queued copy that a sync runs
# inside the call does not bump its version.
_BELOW_AUTOGRAD_KERNELS = torch._C._AutoDispatchBelowADInplaceOrView
_DT = (DeviceTensor,)
_INDEX_MAX = (1 << 62) - 1  # ints C++ and SymInt take as they are (bigger: twin path)
_SSIZE_MAX = (1 << 63) - 1  # a slice's missing stop (PY_SSIZE_T_MAX)


def _slice_args(s: slice):
    """(start, stop, step) as torch's __PySlice_Unpack gives them, or None: a form the
    twin path must handle (a non-int bound, a huge one, a step C++ rejects)."""
    start, stop, step = s.start, s.stop, s.step
    if step is None:
        step = 1
    elif type(step) is not int or not 0 < step <= _INDEX_MAX:
        return None
    if start is None:
        start = 0
    elif type(start) is not int or not -_INDEX_MAX <= start <= _INDEX_MAX:
        return None
    if stop is None:
        stop = _SSIZE_MAX
    elif type(stop) is not int or not -_INDEX_MAX <= stop <= _INDEX_MAX:
        return None
    return start, stop, step


def _select(t, dim: int, index: int, site):
    """applySelect: None where C++ raises (0-dim, out of bounds)."""
    sizes = t._layout[0]
    if dim >= len(sizes) or not -_INDEX_MAX <= index <= _INDEX_MAX:
        return None
    size = sizes[dim]
    if not -size <= index < size:
        return None
    return dispatch(aten.select.int, _DT, (t, dim, index), _NO_KWARGS, site)


def _slice(t, dim: int, s: slice, site, optimize: bool):
    """applySlice: None where C++ raises; `t` itself where C++ skips a full slice."""
    parsed = _slice_args(s)
    sizes = t._layout[0]
    if parsed is None or dim >= len(sizes):
        return None
    start, stop, step = parsed
    if optimize and start == 0 and sizes[dim] <= stop and step == 1:
        return t
    args = (t, dim, start, stop) if step == 1 else (t, dim, start, stop, step)
    return dispatch(aten.slice.Tensor, _DT, args, _NO_KWARGS, site)


_MASKS = (torch.bool, torch.uint8)  # a mask index spans as many dims as it has


def _index_tensor(obj) -> bool:
    """A tensor index the direct path takes: a device tensor or a plain host tensor with
    a dim (a 0-dim one is read on the host by C++: the twin path)."""
    cls = type(obj)
    if cls is DeviceTensor:
        return len(obj._layout[0]) > 0
    return cls is torch.Tensor and obj.dim() > 0


def _apply_slicing(self, index: tuple, site):
    """applySlicing: the view the basic indices make, and the tensor indices left for
    aten.index / index_put_ (None for a dim they leave alone). None: the twin path."""
    specified, ellipses = 0, 0
    for obj in index:
        cls = type(obj)
        if cls is int or cls is slice:
            specified += 1
        elif obj is Ellipsis:
            ellipses += 1
        elif obj is None:
            pass
        elif _index_tensor(obj):
            specified += obj.dim() if obj.dtype in _MASKS else 1
        else:
            return None  # a bool, a list, a 0-dim tensor, an __index__ object
    ndim = len(self._layout[0])
    if specified > ndim or ellipses > 1:
        return None  # C++'s "too many indices" (or NumPy's one-ellipsis rule)
    result, dim, tensors = self, 0, []
    for obj in index:
        cls = type(obj)
        if cls is int:
            result = _select(result, dim, obj, site)
        elif cls is slice:
            result = _slice(result, dim, obj, site, optimize=True)
            dim += 1
            if tensors:
                tensors.append(None)
        elif obj is None:
            result = dispatch(aten.unsqueeze.default, _DT, (result, dim), _NO_KWARGS, site)
            dim += 1
            if tensors:
                tensors.append(None)
        elif obj is Ellipsis:
            dim += ndim - specified
            if tensors:
                tensors.extend([None] * (ndim - specified))
        else:
            if not tensors:
                tensors = [None] * dim
            tensors.append(obj)
            dim += obj.dim() if obj.dtype in _MASKS else 1
        if result is None:
            return None
    while tensors and tensors[-1] is None:
        tensors.pop()
    return result, tensors


def _getitem(vd, args, kwargs):
    """Tensor.__getitem__ with ints, slices, None, Ellipsis and tensors (no bools,
    lists, 0-dim tensors): THPVariable_getitem's ops."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    if kwargs or len(args) != 2 or type(args[0]) is not DeviceTensor:
        return _TWIN
    self, index = args
    cls = type(index)
    if cls is int or cls is slice:  # get_item's one-index case: a slice always dispatched
        if not self._layout[0]:
            return _TWIN
        site = Site.here(1)  # from _guarded_call, as dispatch's capture under a twin
        out = _select(self, 0, index, site) if cls is int else \
            _slice(self, 0, index, site, optimize=False)
        return _TWIN if out is None else out
    if index is None:
        return dispatch(aten.unsqueeze.default, _DT, (self, 0), _NO_KWARGS, Site.here(1))
    if index is Ellipsis:
        return dispatch(aten.alias.default, _DT, (self,), _NO_KWARGS, Site.here(1))
    if cls is not tuple:
        if not _index_tensor(index):
            return _TWIN
        index = (index,)
    site = Site.here(1)
    sliced = _apply_slicing(self, index, site)
    if sliced is None:
        return _TWIN
    result, tensors = sliced
    if tensors:  # advanced indexing
        return dispatch(aten.index.Tensor, _DT, (result, tensors), _NO_KWARGS, site)
    if result is self:  # x[...], x[:, :]: a shallow copy, as C++ makes
        result = dispatch(aten.alias.default, _DT, (self,), _NO_KWARGS, site)
    return result


def _prefix_1s_stripped(t):
    """slicePrefix1sSize: the sizes without their leading 1s."""
    sizes = tuple(t.shape)
    i = 0
    while i < len(sizes) and sizes[i] == 1:
        i += 1
    return list(sizes[i:])


def _view(t, sizes: list, site):
    if type(t) is DeviceTensor:
        return dispatch(aten.view.default, _DT, (t, sizes), _NO_KWARGS, site)
    return t.view(sizes)


def _copy_to(vd, dst, src, site, copy_site):
    """at::indexing::copy_to: copy_, a fill_ from a host scalar, or copy_ of src viewed
    without its leading 1s and expanded to dst."""
    if tuple(src.shape) == dst._layout[0]:
        dispatch(aten.copy_.default, _DT, (dst, src), _NO_KWARGS, copy_site())
        return
    if src.dim() == 0 and type(src) is not DeviceTensor:
        dispatch(aten.fill_.Tensor, _DT, (dst, src), _NO_KWARGS, site)
        return
    src = _view(src, _prefix_1s_stripped(src), site)
    sizes = list(dst._layout[0])
    if list(src.shape) != sizes:
        if type(src) is DeviceTensor:
            src = dispatch(aten.expand.default, _DT, (src, sizes), _NO_KWARGS, site)
        else:
            src = src.expand(sizes)
    dispatch(aten.copy_.default, _DT, (dst, src), _NO_KWARGS, copy_site())


_INT64 = 1 << 63
# at::scalar_tensor on the host fills through scalar_fill, as C++'s scalar_tensor_static
# does for a Python number assigned to a tensor (the unpatched binding: no entry point).
_SCALAR_TENSOR = torch._C._VariableFunctions.scalar_tensor


def _setitem(vd, args, kwargs):
    """Tensor.__setitem__ of a tensor or a Python int, bool or float at ints, slices,
    None, Ellipsis and tensors: THPVariable_setitem's ops."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    if kwargs or len(args) != 3 or type(args[0]) is not DeviceTensor:
        return _TWIN
    self, index, value = args
    cls = type(value)
    if cls is int or cls is bool or cls is float:
        if cls is not float and not -_INT64 <= value < _INT64:
            return _TWIN  # C++'s "Overflow when unpacking long"
        # valueToTensor: a host scalar tensor of self's dtype (its conversion errors too)
        value = _SCALAR_TENSOR(int(value) if cls is bool else value, dtype=self.dtype)
    elif (cls is not DeviceTensor and cls is not torch.Tensor) or value.requires_grad:
        return _TWIN
    site = Site.here(1)  # from _guarded_call, as dispatch's capture under a twin

    def copy_site():  # _copy_'s capture under a twin starts at the twin's __torch_dispatch__
        return Site.here(2)

    cls = type(index)
    if cls is int or cls is slice or index is None or index is Ellipsis:
        # set_item's one-index case (a full slice is skipped, unlike __getitem__'s)
        if index is Ellipsis:
            dst = self
        elif index is None:
            dst = dispatch(aten.unsqueeze.default, _DT, (self, 0), _NO_KWARGS, site)
        elif not self._layout[0]:
            return _TWIN
        elif cls is int:
            dst = _select(self, 0, index, site)
        else:
            dst = _slice(self, 0, index, site, optimize=True)
        if dst is None:
            return _TWIN
        _copy_to(vd, dst, value, site, copy_site)
        return None
    if cls is not tuple:
        if not _index_tensor(index):
            return _TWIN
        index = (index,)
    sliced = _apply_slicing(self, index, site)
    if sliced is None:
        return _TWIN
    result, tensors = sliced
    if not tensors:
        _copy_to(vd, result, value, site, copy_site)
        return None
    stripped = _prefix_1s_stripped(value)
    if len(stripped) != value.dim():
        value = _view(value, stripped, site)
    dispatch(aten.index_put_.default, _DT, (result, tensors, value), _NO_KWARGS, site)
    return None


def _copy_direct(vd, args, kwargs):
    """Tensor.copy_(src[, non_blocking]) with a device tensor on either side: our aten
    copy_ handler. Into a host tensor that autograd's C++ would check (requires grad, an
    inference tensor) or a subclass: the twin path."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    n = len(args)
    if not 2 <= n <= 3:
        return _TWIN
    dst, src = args[0], args[1]
    non_blocking = args[2] if n == 3 else False
    if kwargs:
        if n == 3 or len(kwargs) != 1 or "non_blocking" not in kwargs:
            return _TWIN
        non_blocking = kwargs["non_blocking"]
    if non_blocking.__class__ is not bool or not isinstance(src, torch.Tensor) \
            or isinstance(src, Twin) or src.requires_grad:
        return _TWIN
    if type(dst) is not DeviceTensor:
        if type(dst) is not torch.Tensor or type(src) is not DeviceTensor or not dst.is_cpu \
                or dst.requires_grad or dst.is_inference():
            return _TWIN
    cargs = (dst, src, True) if non_blocking else (dst, src)
    # _copy_'s capture under a twin starts at the twin's __torch_dispatch__: here
    out = dispatch(aten.copy_.default, _DT, cargs, _NO_KWARGS, Site.here(0))
    if type(dst) is DeviceTensor:  # `dst.copy_(src) is dst` (issue's D2D answer is a view)
        return dst
    torch._C._increment_version((dst,))  # ADInplaceOrView's bump after the op, as via a twin
    return out


_REAL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INTEGRAL = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _scalar(conversion, index: bool = False):
    """item(), bool(), float(), int(), index() of a one-element device tensor: the
    _local_scalar_dense C++ would dispatch (a sync), then C++'s conversion. Another
    element count or dtype (C++ raises, or converts by its own rules): the twin path."""
    def direct(vd, args, kwargs):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if kwargs or len(args) != 1 or type(args[0]) is not DeviceTensor:
            return _TWIN
        t = args[0]
        dtype = t.dtype
        if dtype in _REAL:
            if index:
                return _TWIN  # "only integer tensors ... can be converted to an index"
        elif dtype not in _INTEGRAL and dtype is not torch.bool:
            return _TWIN
        if math.prod(t._layout[0]) != 1:
            return _TWIN
        value = dispatch(aten._local_scalar_dense.default, _DT, (t,), _NO_KWARGS, Site.here(1))
        return value if conversion is None else conversion(value)
    return direct


DIRECT = {T.__getitem__: _getitem, T.__setitem__: _setitem, T.copy_: _copy_direct,
          T.item: _scalar(None), T.__bool__: _scalar(bool), T.__float__: _scalar(float),
          T.__int__: _scalar(int), T.__index__: _scalar(int, index=True)}


_NO_KWARGS: dict = {}  # never written: the keywords of a call that has none


_NO_SUBCLASS = torch._C.DisableTorchFunctionSubclass
_ORIGINAL: dict = {}  # an entry point patched while attached (entry_points.py) -> the original


def handle(vd, func, args, kwargs):
    """One torch call, for the device `vd`: what the function mode does, and what a
    device tensor's __torch_function__ and the patched entry points do with the mode off.
    The caller has disabled the subclass protocol, so results stay as dispatch made them."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    func = _ORIGINAL.get(func, func)  # a patched method, as C++ passes it to a mode
    if not kwargs and not vd.hb.host_memory_in_flight and not runtime.guard_missing \
            and func not in FUNCTION_HANDLERS:
        # The common case: no keyword can make a factory or pin memory, no pinned
        # operand to watch (_watching_pinned). Same outcome as below.
        if func in GUARDED and _has_device_tensor(args, _NO_KWARGS):
            return _guarded_call(vd, func, args, _NO_KWARGS)
        return func(*args)
    kwargs = kwargs or {}
    if runtime.guard_missing and _grad_on_device(args, kwargs):
        # Without the native guard (cuda_guard.py), autograd's C++ would abort here.
        raise NotModelledError(f"{call_name(func)} on a virtual CUDA tensor that requires grad",
                               f"it would abort the process: {runtime.guard_missing}")
    # Device work holds the runtime lock (host_threads.py); host-only calls do not,
    # so threads computing on the host never wait for each other here.
    handler = FUNCTION_HANDLERS.get(func)
    if handler is not None:
        with RUNTIME_LOCK:
            return handler(vd, func, args, kwargs)
    if "generator" in kwargs and _has_device_tensor(args, kwargs):
        check_generator_arg(kwargs)
    if func in GUARDED and _has_device_tensor(args, kwargs):
        return _guarded_call(vd, func, args, kwargs)
    device = kwargs.get("device")
    if device is not None and _is_cuda(device):
        with RUNTIME_LOCK:
            return _factory(vd, func, args, kwargs)
    if kwargs.get("pin_memory"):  # from the pinned host caching allocator
        value = func(*args, **dict(kwargs, pin_memory=False))
        with RUNTIME_LOCK:
            return _pinned_like(vd, value, Site.here(1), copy=func not in EMPTY_FACTORIES)
    if vd._pinned and _watching_pinned(vd):
        hits = pinned_operands(args, kwargs, vd._pinned.lookup)
        if hits:
            with RUNTIME_LOCK:
                return _host_call(vd, func, args, kwargs, hits)
    return func(*args, **kwargs)


def device_function(func, types, args=(), kwargs=None):
    """DeviceTensor.__torch_function__: a call with a device tensor among its arguments,
    in any thread, whether or not the function mode is pushed. With no device active
    (a device tensor kept after its block) it runs as plain torch would."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    vd = current()
    with _NO_SUBCLASS():
        if vd is None or not vd.active:
            return func(*args, **(kwargs or {}))
        return handle(vd, func, args, kwargs)


class FunctionMode(TorchFunctionMode):
    """Pushed in the thread that entered the device only while a call with no device
    tensor needs it: a host access to pinned memory (see `arm`)."""

    def __init__(self, vd):
        super().__init__()
        self.vd = vd

    def __torch_function__(self, func, types, args=(), kwargs=None):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        with _NO_SUBCLASS():
            return handle(self.vd, func, args, kwargs)


class ThreadMode(FunctionMode):
    """The function mode of a thread other than the one that entered the device
    (threads.py pushes it once per thread): it serves whichever virtual device is active,
    and lets calls through when none is, or in the thread that entered it (whose own
    FunctionMode, when pushed, has already seen the call)."""

    def __init__(self):
        TorchFunctionMode.__init__(self)

    @property
    def vd(self):
        return current()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        vd = current()
        if vd is None or not vd.active or threads.is_owner():
            return func(*args, **(kwargs or {}))
        with _NO_SUBCLASS():
            return handle(vd, func, args, kwargs)


def _host_call(vd, func, args, kwargs, hits):
    """A host-side call with pinned tensors among its arguments (ops/host.py says which
    it reads and writes)."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    out = func(*args, **kwargs)
    specs = host_access_specs(func, hits, out, args)
    if specs:
        vd.hb.host_access(f"host {call_name(func)}", specs, Site.here(2))
    return out


def _factory(vd, func, args, kwargs):
    """torch.zeros(..., device="cuda") and friends."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    site = Site.here(2)
    if kwargs.get("requires_grad"):
        raise NotModelledError("autograd (requires_grad=True)", runtime.guard_missing and
                               f"it would also abort the process: {runtime.guard_missing}")
    if _has_device_tensor(args, kwargs):
        return func(*args, **dict(kwargs, device=None))  # *_like of a device tensor
    kw = dict(kwargs, device="cpu")
    kw.pop("pin_memory", None)
    if func in RANDOM_FACTORIES:  # drawn from the device's CUDA generator, not the CPU's
        vd.graphs.no_random(call_name(func))
        kw["generator"] = cuda_generator_arg(vd, kw.get("generator"))
    value = func(*args, **kw)  # computed on the host now: random values do not depend on the schedule
    if func in EMPTY_FACTORIES:
        return vd.new_tensor(tuple(value.shape), value.stride(), 0, value.dtype, None, site,
                             getattr(func, "__name__", "empty"))
    out = vd.new_tensor(tuple(value.shape), value.stride(), 0, value.dtype, None, site,
                        getattr(func, "__name__", "factory"))
    name = f"torch.{getattr(func, '__name__', 'factory')}"
    upload(vd, out, value, site, name, blocking=func in UPLOAD_FACTORIES, snapshot=False)
    return out


def upload(vd, dst: DeviceTensor, src: torch.Tensor, site: Site, name: str,
           blocking: bool, snapshot: bool = True) -> None:
    """H2D copy on the current stream. From pinned memory with non_blocking, the copy reads
    the host buffer when it runs; otherwise the host data is taken now (pageable copies
    are staged synchronously), and a blocking copy also waits for the stream."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    pinned = vd.pinned_alloc(src)
    if snapshot and pinned is None:  # a factory's fill is a kernel; this is a real copy
        vd.graphs.forbid(f"{name} from pageable host memory", stream=vd.current_stream)
    dst_ref = Ref(dst)
    accesses = [_access(dst, True)]
    if pinned is not None and not blocking:
        accesses.append(tensor_access(pinned, src, False))
        host_src = src  # read when the copy runs
    else:
        vd.host_read(src, name, site)
        host_src = src.detach().clone() if snapshot else src
    vd.launch(name, accesses, site, lambda: _copy_into(dst_ref.view(), host_src))
    if pinned is not None and not blocking:  # the block waits for it; its source is watched
        upload_queued(vd, src, pinned, site, name)
    if blocking:
        vd.sync_stream(vd.current_stream)


def _copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
        aten.copy_.default(dst, src)


def download(vd, dst: torch.Tensor, src: DeviceTensor, site: Site, name: str,
             non_blocking: bool) -> torch.Tensor:
    """D2H copy on the current stream. Into pinned memory with non_blocking, the host
    returns at once and the data lands when the copy runs; otherwise the host waits."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    pinned = vd.pinned_alloc(dst)
    src_ref = Ref(src)
    accesses = [_access(src, False)]
    if pinned is not None:
        accesses.append(tensor_access(pinned, dst, True))
    vd.launch(name, accesses, site, lambda: _copy_into(dst, src_ref.view()))
    if pinned is not None:  # the block waits for it; dst is poison until it ran
        download_queued(vd, dst)
    if pinned is None or not non_blocking:
        vd.sync_stream(vd.current_stream)
    return dst


# --- function-level handlers -------------------------------------------------------

def _to(vd, func, args, kwargs):
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    self = args[0]
    if func.__name__ == "cuda":  # (T.cuda itself is our entry point while attached)
        device, dtype = kwargs.get("device", args[1] if len(args) > 1 else None), None
        non_blocking = kwargs.get("non_blocking", args[2] if len(args) > 2 else False)
        (device,) = _int_device((0 if device is None else device,))
        copy = False
    else:
        parse = dict(kwargs)
        copy = parse.pop("copy", False)  # Tensor.to takes it; _parse_to does not
        device, dtype, non_blocking, _fmt = torch._C._nn._parse_to(*_int_device(args[1:]), **parse)
    site = Site.here(2)
    if device is not None and _is_cuda(device) and not isinstance(self, DeviceTensor):
        value = self if dtype is None or dtype == self.dtype else self.to(dtype)
        out = vd.new_tensor(tuple(value.shape), contiguous_strides(value.shape), 0,
                            value.dtype, None, site, "Tensor.to")
        upload(vd, out, value, site, "H2D copy (Tensor.to)", blocking=not non_blocking)
        return out
    if isinstance(self, DeviceTensor) and (device is None or _is_cuda(device)):
        if (dtype is None or dtype == self.dtype) and not copy:
            return self
        return aten._to_copy.default(self, dtype=dtype or self.dtype)
    return func(*args, **kwargs)


def _int_device(args):
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return (torch.device("cuda", args[0]),) + tuple(args[1:])
    return args



def _pin_memory(vd, func, args, kwargs):
    self = args[0]
    if isinstance(self, DeviceTensor):
        raise RuntimeError("cannot pin 'torch.cuda' memory: only dense CPU tensors can be pinned")
    if vd.pinned_alloc(self) is not None:
        return self
    return _pinned_like(vd, self, Site.here(2))


def _is_pinned(vd, func, args, kwargs):
    return vd.pinned_alloc(args[0]) is not None


def _record_stream(vd, func, args, kwargs):
    self, stream = args[0], args[1] if len(args) > 1 else kwargs["stream"]
    if not isinstance(self, DeviceTensor):
        raise RuntimeError("record_stream: only tensors on the (virtual) CUDA device have streams")
    if not isinstance(stream, VirtualStream):
        raise TypeError(f"record_stream expects a torch.cuda.Stream of the virtual device, got {stream!r}")
    vd.hb.record_stream(self._vs.alloc, stream.agent)
    self._vs.recorded_streams.add(stream)


def _tolist(vd, func, args, kwargs):
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    self = args[0]
    if isinstance(self, DeviceTensor):
        return self.cpu().tolist()
    if _watching_pinned(vd):  # only a pinned tensor's read is an access (no stack capture else)
        vd.host_read(self, "Tensor.tolist", Site.here(2))
    return func(*args, **kwargs)


def _numpy(vd, func, args, kwargs):
    self = args[0]
    if isinstance(self, DeviceTensor):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() "
                        "to copy the tensor to host memory first.")
    if func.__name__ == "numpy" and vd.pinned_alloc(self) is not None:  # (not __array__)
        # A view, not a read: accesses through it are reported (ops/numpy_views.py).
        return host_result(func, func(*args, **kwargs), args)
    if _watching_pinned(vd):  # only a pinned tensor's read is an access
        vd.host_read(self, "Tensor.numpy", Site.here(2))
    return func(*args, **kwargs)


def _repr(vd, func, args, kwargs):
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    self = args[0]
    if isinstance(self, DeviceTensor):
        text = repr(self.cpu())
        return text[:-1] + ", device='cuda:0')"
    if vd.pinned_alloc(self) is not None:
        vd.host_read(self, "print", Site.here(2))
    return func(*args, **kwargs)


def _data_ptr(vd, func, args, kwargs):
    self = args[0]
    if isinstance(self, DeviceTensor):
        vd.scheduler.note("data_ptr")  # an address: memory the detector cannot follow
        return self._vs.block.address + self.storage_offset() * self.element_size()
    return func(*args, **kwargs)


def _storage(vd, func, args, kwargs):
    if isinstance(args[0], DeviceTensor):  # a read-only stand-in (storage.py)
        kind = VirtualUntypedStorage if func is T.untyped_storage else VirtualTypedStorage
        return kind(args[0])
    return func(*args, **kwargs)


def _reduce_ex(vd, func, args, kwargs):
    if isinstance(args[0], DeviceTensor):
        if saving():
            return reduce_device_tensor(args[0])
        raise NotModelledError("pickling a virtual CUDA tensor (outside torch.save)")
    return func(*args, **kwargs)


def _untyped(name):
    def fail(vd, func, args, kwargs):
        if _has_device_tensor(args, kwargs):
            raise NotModelledError(name)
        return func(*args, **kwargs)
    return fail


def _no_backward(name):
    def fail(vd, func, args, kwargs):
        if _has_device_tensor(args, kwargs):
            raise NotModelledError(
                f"backward ({name})", "a CPU build's autograd engine cannot run a backward "
                "pass over CUDA tensors (it needs the CUDA accelerator to put each backward "
                "op on its forward op's stream); forward passes with grad enabled are modelled")
        return func(*args, **kwargs)
    return fail


FUNCTION_HANDLERS = {
    T.to: _to, T.cuda: _to,
    T.pin_memory: _pin_memory, T.is_pinned: _is_pinned,
    T.record_stream: _record_stream,
    T.tolist: _tolist, T.numpy: _numpy, T.__array__: _numpy,
    T.__repr__: _repr, T.__str__: _repr, T.__format__: lambda vd, f, a, k: (
        format(a[0].cpu(), *a[1:]) if isinstance(a[0], DeviceTensor) else f(*a, **k)),
    T.data_ptr: _data_ptr,
    T.untyped_storage: _storage, T.storage: _storage,
    T.__reduce_ex__: _reduce_ex,
    # Backward on a CPU build stops in the autograd engine's C++ ("Cannot access
    # accelerator device when none is available": it asks for the CUDA accelerator to
    # order each backward op after its forward stream), which no Python hook reaches.
    T.backward: _no_backward("Tensor.backward"),
    torch.autograd.backward: _no_backward("torch.autograd.backward"),
    torch.autograd.grad: _no_backward("torch.autograd.grad"),
}


def _new_tensor(vd, func, args, kwargs):
    """Tensor.new_tensor of a device tensor: on the device, as torch.tensor(data). (C++
    would make it on the twin's device, the CPU: a silent wrong path.)"""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    self = args[0]
    if not isinstance(self, DeviceTensor):
        return func(*args, **kwargs)
    data = args[1] if len(args) > 1 else kwargs["data"]
    kw = dict(kwargs)
    kw.pop("data", None)
    kw.setdefault("dtype", self.dtype)
    kw.setdefault("device", self.device)
    if _is_cuda(kw["device"]):
        return _factory(vd, torch.tensor, (data,), kw)
    return torch.tensor(data, **kw)


# Twin handling: methods whose C++ would act on the twin's (CPU) device.
FUNCTION_HANDLERS[T.new_tensor] = _new_tensor


# --- aten-level ----------------------------------------------------------------------

def dispatch(func, types, args, kwargs, site=None):
    """An aten op with a device tensor (or twin) argument; `site`: the caller's capture
    (a guarded call taking the direct path), else captured here."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    vd = current()  # the common case first: no error text formatted per op
    if vd is None:
        vd = active_device(f"{func} on a virtual CUDA tensor")
    threads.ensure_thread_mode()  # device tensors reach here from any thread
    kwargs = kwargs or {}
    if Twin in types:
        args = tuple(_untwin(a) for a in args)
        kwargs = {k: _untwin(v) for k, v in kwargs.items()}
    handler = DISPATCH_HANDLERS.get(func)
    if handler is None and _is_composite(func):
        # Outside inference mode the autograd key decomposes these (aten.to, ...) before
        # they reach us; under torch.inference_mode() they arrive whole. Decompose them
        # here the same way, or `t.to("cpu")` would be taken for a view of t.
        out = func.decompose(*args, **kwargs)
        if out is not NotImplemented:
            return out
    if handler is None and func not in _CHECKED:
        _check_op(func)
    with RUNTIME_LOCK:
        if handler is not None:
            if site is not None:  # a direct guarded call's copy_ (the one such handler)
                return handler(vd, func, args, kwargs, site)
            return handler(vd, func, args, kwargs)
        return issue(vd, func, args, kwargs, site or Site.here(2))


_CHECKED: set = set()  # ops known to run on the virtual device


def _check_op(func) -> None:
    """A custom op (not aten's) runs here through its CPU kernel: refuse one without."""
    if getattr(func, "namespace", "aten") != "aten":
        refuse_without_cpu_kernel(func)
    _CHECKED.add(func)


_COMPOSITE: dict = {}


def _is_composite(func) -> bool:
    """Whether the op has a CompositeImplicitAutograd kernel (cached per op)."""
    known = _COMPOSITE.get(func)
    if known is None:
        known = _COMPOSITE[func] = torch._C._dispatch_has_kernel_for_dispatch_key(
            func.name(), "CompositeImplicitAutograd")
    return known


def _copy_(vd, func, args, kwargs, site=None):
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    dst, src = args[0], args[1]
    non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
    site = site or Site.here(2)
    dst_dev, src_dev = isinstance(dst, DeviceTensor), isinstance(src, DeviceTensor)
    if dst_dev and not src_dev:
        upload(vd, dst, src, site, "H2D copy_", blocking=not non_blocking)
        return dst
    if src_dev and not dst_dev:
        return download(vd, dst, src, site, "D2H copy_", non_blocking)
    if dst_dev:
        return issue(vd, func, (dst, src), {}, site)
    return func(*args, **kwargs)


def _to_copy(vd, func, args, kwargs):
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    self = args[0]
    device = kwargs.get("device")
    if isinstance(self, DeviceTensor) and device is not None and torch.device(device).type == "cpu":
        non_blocking = kwargs.get("non_blocking", False)
        dtype = kwargs.get("dtype") or self.dtype
        with torch._C._DisableTorchDispatch():
            dst = torch.empty(tuple(self.shape), dtype=dtype)
        site = Site.here(2)
        if non_blocking:  # like PyTorch: a non_blocking D2H copy lands in pinned memory
            dst = _pinned_like(vd, dst, site, copy=False)
        return download(vd, dst, self, site, "D2H copy (to cpu)", non_blocking)
    if isinstance(self, DeviceTensor) or _has_device_tensor(args, kwargs):
        return issue(vd, func, args, kwargs, Site.here(2))
    if device is not None and _is_cuda(device):
        site = Site.here(2)
        kw = dict(kwargs, device="cpu")
        kw.pop("non_blocking", None)
        value = func(self, **kw)
        out = vd.new_tensor(tuple(value.shape), value.stride(), 0, value.dtype, None, site, "to")
        upload(vd, out, self if value.dtype == self.dtype else value, site, "H2D copy",
               blocking=not kwargs.get("non_blocking", False))
        return out
    return func(*args, **kwargs)


def _record_stream_dispatch(vd, func, args, kwargs):
    raise NotImplementedError("record_stream reached aten without going through Tensor.record_stream")


def _inplace_view(vd, func, args, kwargs):
    """t_(), unsqueeze_(), ... change a tensor's layout in place: no device work."""
    self = args[0]
    if not isinstance(self, DeviceTensor):
        return func(*args, **kwargs)
    size, stride, offset, _dtype = output_layouts(func, args, kwargs)[0]
    self.set_layout(size, stride, offset)
    return self


def _resize(vd, func, args, kwargs):
    self = args[0]
    if isinstance(self, DeviceTensor):
        if tuple(args[1]) == tuple(self.shape):
            return self
        raise NotModelledError("resize_ of a virtual CUDA tensor")
    return func(*args, **kwargs)


DISPATCH_HANDLERS = {
    aten.copy_.default: _copy_,
    aten._to_copy.default: _to_copy,
    aten.is_pinned.default: lambda vd, func, args, kwargs: False,
    aten.record_stream.default: _record_stream_dispatch,
    aten.resize_.default: _resize,
    aten.set_.source_Storage: _untyped("Tensor.set_"),
    aten.set_.source_Storage_storage_offset: _untyped("Tensor.set_"),
    aten.set_.source_Tensor: _untyped("Tensor.set_"),
}
for _op in (aten.t_.default, aten.transpose_.default, aten.unsqueeze_.default,
            aten.squeeze_.default, aten.squeeze_.dim, aten.as_strided_.default,
            aten.swapdims_.default, aten.swapaxes_.default):
    DISPATCH_HANDLERS[_op] = _inplace_view


set_dispatch(dispatch)  # DeviceTensor and Twin hand every aten op to dispatch()
set_function(device_function)  # and DeviceTensor every torch call to device_function()


# --- the function mode, on only while needed ------------------------------------------

def _pinned_like(vd, value, site, copy=True):
    """pinned_like, then the function mode on: host calls on pinned memory are accesses."""
    out = pinned_like(vd, value, site, copy=copy)
    arm(vd)
    return out


class Interception:
    """What `enter` set up: the owner thread's function mode (pushed or not) and the
    patched entry points."""

    def __init__(self, vd):
        self.vd = vd
        self.mode = FunctionMode(vd)
        self.pushed = False
        self.threads_spawned = False  # the owner started threads or pool work
        self.patches = None


_state: Interception | None = None


def _watching_pinned(vd) -> bool:
    """Whether host calls on pinned memory are accesses the model must see: while a
    stream's access to host memory is in flight (the host has not synced past it).
    Otherwise such a host access can race with nothing (hb.host_memory_in_flight)."""
    return bool(vd.hb.host_memory_in_flight)


def _needed(state: Interception) -> bool:
    """Whether host-only calls of the owner thread must pass through the mode: while a
    stream's access to pinned memory is in flight (_watching_pinned), and once the owner
    has started threads (another thread may pin memory and copy into it, and no call of
    the owner's would push the mode in time)."""
    return _watching_pinned(state.vd) or state.threads_spawned


def arm(vd) -> None:
    """Push the owner thread's function mode if it is needed now and not pushed. Called
    in the owner thread at the points that make it needed; elsewhere it does nothing
    (the owner's own mode cannot be pushed from another thread: see `_needed`)."""
    state = _state
    if state is None or state.pushed or state.vd is not vd or not threads.is_owner():
        return
    if _needed(state):
        torch._C._push_on_torch_function_stack(state.mode)
        state.pushed = True


def _mode_on() -> bool:
    """Whether one of our function modes is pushed in the calling thread."""
    state = _state
    if state is not None and state.pushed and threads.is_owner():
        return True
    return threads.has_thread_mode()


def _on_spawn() -> None:
    """The calling thread starts a thread or submits pool work (host_threads.py)."""
    state = _state
    if state is not None and threads.is_owner():
        state.threads_spawned = True
        arm(state.vd)


def settle(vd) -> None:
    """Between tests: the threads a test started no longer need the mode; pop it if
    nothing else does."""
    state = _state
    if state is None or state.vd is not vd or not threads.is_owner():
        return
    state.threads_spawned = False
    relax(vd)


def relax(vd) -> None:
    """Pop the owner thread's function mode if nothing needs it any more (after a host
    sync, and between tests). Only while the mode is on this thread's stack: inside one
    of its handlers torch has taken it off for the call and puts it back after, so it
    stays until a later sync."""
    state = _state
    if state is None or state.vd is not vd or not state.pushed or not threads.is_owner():
        return
    if not _needed(state) and _on_stack(state.mode):
        _remove_mode(state.mode)
        state.pushed = False


def _on_stack(mode) -> bool:
    get = torch._C._get_function_stack_at
    return any(get(i) is mode for i in range(torch._C._len_torch_function_stack()))


def _remove_mode(mode) -> None:
    """Take `mode` off this thread's torch-function stack, wherever it is (a mode pushed
    after ours, while one of its handlers ran, may sit above it)."""
    n = torch._C._len_torch_function_stack()
    if n and torch._C._get_function_stack_at(n - 1) is mode:
        torch._C._pop_torch_function_stack()
        return
    above = []
    while torch._C._len_torch_function_stack():
        top = torch._C._pop_torch_function_stack()
        if top is mode:
            break
        above.append(top)
    for m in reversed(above):
        torch._C._push_on_torch_function_stack(m)


def enter(vd) -> Interception:
    """Intercept torch calls: device tensors' __torch_function__ (any thread), the
    patched entry points (factories by device, .cuda()/.to()/pin_memory(), any thread),
    the owner thread's function mode while `_needed`, and a ThreadMode in every other
    thread (threads.py)."""
    global _state
    # The owner is known before its mode is pushed and until it is popped, so that a
    # ThreadMode lower on this thread's stack never handles a call twice.
    threads.start(ThreadMode, on_spawn=_on_spawn)
    state = _state = Interception(vd)
    try:
        state.patches = entry_points.install(handle, _mode_on, _ORIGINAL)
        arm(vd)  # a session re-attached with pinned memory still registered
    except BaseException:
        exit(state)
        raise
    return state


def exit(state: Interception) -> None:
    global _state
    try:
        if state.pushed:
            _remove_mode(state.mode)
            state.pushed = False
    finally:
        _state = None
        try:
            if state.patches is not None:
                entry_points.uninstall(state.patches, _ORIGINAL)
        finally:
            threads.stop()
