"""Triton kernels on the virtual device, through Triton's own CPU interpreter.

Under `pytest --streamorder` the session sets TRITON_INTERPRET=1 before any conftest.py
is imported (early.py), so `@triton.jit` makes interpreted kernels. While a device is
attached, a launch (`kernel[grid](...)`, `kernel.run(...)`, through `@triton.autotune`
and `@triton.heuristics`) is a deferred op on the current stream, like any device op:

- at issue, the model gets, per allocation among its tensor arguments, a pending read
  and a pending write whose superset is the whole allocation (a kernel may address any
  byte of it), checked against the clocks of the issue;
- when the stream runs it, the interpreter runs the kernel on the CPU buffers
  themselves (not on `.cpu()` copies, which would be syncs), every load, store and
  atomic records the bytes it addresses (masked-off lanes touch nothing), and the
  pending accesses resolve to exactly those bytes (model: hb.resolve); a race found
  then is reported at the next launch, host access or sync, as for indexed ops.

An address outside every tensor argument's memory fails the kernel by name (on a GPU it
is an illegal memory access; here it would read or corrupt host memory). What the
interpreter lacks (inline asm, extern libdevice calls, ...) fails by NotModelledError.
`@triton.autotune` runs its first config, or the one `triton_config` names, without
benchmarking. A kernel decorated before TRITON_INTERPRET was set is refused by name. While a device is
attached every launch goes this way: host tensor arguments are refused as Triton refuses
them on a GPU.
"""

from __future__ import annotations

import dataclasses
import importlib

import torch

from ..errors import NotModelledError
from ..host_threads import RUNTIME_LOCK
from ..model import Pending, Site
from ..model.regions import from_runs
from ..ops.triton_access import chosen_config, stop_waiting, when_triton_imported
from .issue import Ref
from .patching import Patches
from .runtime import current
from .tensor import DeviceTensor


class KernelPending(Pending):
    """A Triton launch's access: its bytes are known once the kernel ran."""

    __slots__ = ()
    found_when = ("the Triton kernel ran (the elements its loads and stores address are "
                  "known only then)")

    def describe(self) -> str:
        return "the elements its loads and stores address (not known yet)"


class IllegalAddress(RuntimeError):
    """A Triton kernel addressed memory outside its tensor arguments (CUDA: an illegal
    memory access). Raised instead of letting the interpreter touch host memory."""


# --- install while a device is attached -----------------------------------------------

class Installed:
    """What install() changed: undone by uninstall()."""

    def __init__(self):
        self.patches = Patches()
        self.waiting = None  # the import hook, while triton is not imported yet


def install(vd) -> Installed:
    """Route Triton launches to the active device while it is attached: patched now if
    triton is imported, else right after it is."""
    done = Installed()
    done.waiting = when_triton_imported(lambda: _patch(done.patches))
    return done


def uninstall(done: Installed) -> None:
    stop_waiting(done.waiting)
    done.patches.undo()


def _patch(patches: Patches) -> None:
    try:
        from triton.runtime import autotuner, interpreter, jit
    except ImportError:  # a broken or stub triton: launches go where they would go
        return
    patches.set(interpreter.InterpretedFunction, "run",
                _interpreted_run(interpreter.InterpretedFunction.run))
    patches.set(jit.JITFunction, "run", _compiled_run(jit.JITFunction.run))
    patches.set(autotuner.Autotuner, "run", _autotuned_run(autotuner.Autotuner.run))


# --- the three entry points ------------------------------------------------------------

def _interpreted_run(original):
    def run(self, *args, grid, warmup, **kwargs):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        vd = current()
        if vd is None or warmup:
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)
        # Every launch while the device is attached, also one without device tensors:
        # on a GPU host tensors are refused, and raw integer addresses must not reach
        # host memory.
        with RUNTIME_LOCK:
            return launch(vd, self, args, kwargs, grid, Site.here(1))

    return run


def _compiled_run(original):
    def run(self, *args, grid, warmup, **kwargs):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if current() is not None:  # a warm-up would compile for a GPU too
            raise NotModelledError(
                f"Triton kernel {self.__name__!r} compiled for a GPU",
                "it was decorated with @triton.jit before TRITON_INTERPRET=1 was set, so "
                "it has no CPU interpreter to run on the virtual device. `pytest "
                "--streamorder` sets it before conftest.py is imported; a kernel defined "
                "earlier (a plugin, sitecustomize) or used in virtual_device() outside "
                "pytest --streamorder needs TRITON_INTERPRET=1 in the environment")
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    return run


def _autotuned_run(original):
    def run(self, *args, **kwargs):
        """No benchmarking on the virtual device: the first config, or the one
        triton_config named (the rest as Autotuner.run does with one config)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if current() is None:
            return original(self, *args, **kwargs)
        config = chosen_config(self)
        conflicts = kwargs.keys() & config.kwargs.keys()
        if conflicts:  # Triton's own check and words
            raise ValueError(f"Conflicting meta-parameters: {', '.join(conflicts)}."
                             " Make sure that you don't re-define auto-tuned symbols.")
        self.nargs = dict(zip(self.arg_names, args))
        self.best_config = config
        try:
            if config.pre_hook is not None:
                config.pre_hook({**self.nargs, **kwargs, **config.all_kwargs()})
            return self.fn.run(*args, **kwargs, **config.all_kwargs())
        finally:
            self.nargs = None

    return run


# --- a launch ----------------------------------------------------------------------------

def launch(vd, fn, args, kwargs, grid, site: Site) -> None:
    """Issue one interpreted kernel launch on vd's current stream."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    name = f"Triton kernel {fn.__name__}"
    _interpreter(name)
    tensors: list = []
    cargs = [_capture(a, tensors, name, i) for i, a in enumerate(args)]
    ckwargs = {k: _capture(v, tensors, name, k) for k, v in kwargs.items()}
    spans: dict = {}  # id(alloc) -> (block, nbytes, read pending, write pending)
    accesses = []
    for t in tensors:
        alloc = t._vs.alloc
        if id(alloc) not in spans:
            nbytes = t._vs.nbytes
            read, write = KernelPending(0, nbytes), KernelPending(0, nbytes)
            spans[id(alloc)] = (t._vs.block, nbytes, read, write)
            accesses += [(alloc, read, False), (alloc, write, True)]
    hb = vd.hb

    def run():
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        recorder = None
        try:
            recorder = _Recorder(name, [(block.data.data_ptr(), nbytes)
                                        for block, nbytes, _r, _w in spans.values()])
            with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
                _interpret(fn, name, grid, [_materialize(a) for a in cargs],
                           {k: _materialize(v) for k, v in ckwargs.items()}, recorder)
        finally:  # what ran touched exactly these bytes, even if the kernel failed
            for i, (_block, _n, read, write) in enumerate(spans.values()):
                hb.resolve(read, None if recorder is None else recorder.exact(i, False))
                hb.resolve(write, None if recorder is None else recorder.exact(i, True))

    vd.launch(name, accesses, site, run)


def _interpreter(name: str):
    """Triton's interpreter module, or a named error saying what to install."""
    try:
        return importlib.import_module("triton.runtime.interpreter")
    except ImportError as exc:
        raise NotModelledError(
            f"{name} without Triton's CPU interpreter",
            f"it cannot be imported ({exc}); pip install 'pytest-streamorder[triton]' "
            f"(triton and numpy)") from None


class _Wrapped:
    """A TensorWrapper (triton.reinterpret) or host TensorDescriptor around a Ref."""

    def __init__(self, original, ref: Ref):
        self.original = original
        self.ref = ref


def _capture(value, tensors: list, name: str, where):
    if isinstance(value, DeviceTensor):
        tensors.append(value)
        return Ref(value)
    if isinstance(value, torch.Tensor):
        # Triton's own words for a host tensor handed to a GPU kernel
        raise ValueError(f"Pointer argument (at {where}) cannot be accessed from Triton "
                         f"(cpu tensor?): {name} got a {value.device} tensor")
    if isinstance(value, tuple):
        return _same_tuple(value, [_capture(v, tensors, name, where) for v in value])
    base = getattr(value, "base", None)
    if isinstance(base, DeviceTensor):
        tensors.append(base)
        return _Wrapped(value, Ref(base))
    return value


def _materialize(value):
    if isinstance(value, Ref):
        return value.view()
    if isinstance(value, tuple):
        return _same_tuple(value, [_materialize(v) for v in value])
    if isinstance(value, _Wrapped):
        original, view = value.original, value.ref.view()
        if dataclasses.is_dataclass(original):  # a TensorDescriptor
            return dataclasses.replace(original, base=view)
        return type(original)(view, original.dtype)  # a TensorWrapper
    return value


def _same_tuple(original: tuple, items: list) -> tuple:
    """`items` as a tuple of the original's type (a namedtuple stays one)."""
    return type(original)(*items) if hasattr(original, "_fields") else tuple(items)


def _interpret(fn, name: str, grid, args, kwargs, recorder) -> None:
    """Run the kernel in Triton's interpreter on CPU views, recording its addresses."""
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    interpreter = _interpreter(name)
    executor = interpreter.GridExecutor(fn.rewrite(), fn.arg_names, grid, fn.pre_run_hooks)
    # The arguments are the device buffers already: no copies to the host and back.
    executor._init_args_hst = lambda args_dev, kw: (list(args_dev), dict(kw))
    executor._restore_args_dev = lambda *unused: None
    builder = interpreter.interpreter_builder
    hooks = recorder.hooks(builder)
    for attr, hook in hooks.items():
        setattr(builder, attr, hook)
    try:
        executor(*args, **kwargs)
    except interpreter.InterpreterError as exc:
        cause = exc.__cause__
        if isinstance(cause, IllegalAddress):
            raise cause from None
        if isinstance(cause, RuntimeError) and "outside of the scope of a kernel" in str(cause):
            raise NotModelledError(
                f"{name} calling a @triton.jit function compiled for a GPU",
                "it was decorated before TRITON_INTERPRET=1 was set (Triton's own tl.sum, "
                "tl.max, ... are decorated when triton is first imported): import triton "
                "only after pytest --streamorder starts (not from a plugin loaded "
                "earlier), or set TRITON_INTERPRET=1 in the environment") from None
        if isinstance(cause, NotImplementedError) or (
                isinstance(cause, AttributeError) and "InterpreterBuilder" in str(cause)):
            raise NotModelledError(f"{name}: {cause}", "Triton's CPU interpreter does not "
                                   "implement it", by="Triton's CPU interpreter") from None
        raise
    finally:
        for attr in hooks:
            delattr(builder, attr)  # the class's methods again


class _Recorder:
    """The bytes a kernel's loads and stores address, per argument allocation."""

    def __init__(self, name: str, spans: list):
        import numpy as np  # Triton's interpreter needs it; the plugin does not

        self.np = np
        self.name = name
        # Sorted by address for the search; hits[i] is spans[i]'s (reads, writes), each
        # a list of (byte offsets, itemsize).
        self.order = np.argsort(np.array([b for b, _n in spans], dtype=np.uint64), kind="stable")
        self.bases = np.array([spans[i][0] for i in self.order], dtype=np.uint64)
        self.ends = np.array([spans[i][0] + spans[i][1] for i in self.order], dtype=np.uint64)
        self.hits = [([], []) for _ in spans]

    def hooks(self, builder) -> dict:
        load, store = builder.create_masked_load, builder.create_masked_store
        rmw, cas = builder.create_atomic_rmw, builder.create_atomic_cas
        note = self.note

        def create_masked_load(ptrs, mask, other, cache_policy, is_volatile):
            note(ptrs, mask, read=True, write=False)
            return load(ptrs, mask, other, cache_policy, is_volatile)

        def create_masked_store(ptrs, value, mask, cache_policy):
            note(ptrs, mask, read=False, write=True)
            return store(ptrs, value, mask, cache_policy)

        def create_atomic_rmw(op, ptr, val, mask, sem, scope):
            note(ptr, mask, read=True, write=True)
            return rmw(op, ptr, val, mask, sem, scope)

        def create_atomic_cas(ptr, cmp, val, sem, scope):
            note(ptr, None, read=True, write=True)
            return cas(ptr, cmp, val, sem, scope)

        return {"create_masked_load": create_masked_load,
                "create_masked_store": create_masked_store,
                "create_atomic_rmw": create_atomic_rmw, "create_atomic_cas": create_atomic_cas}

    def note(self, ptrs, mask, read: bool, write: bool) -> None:
        np = self.np
        addrs = np.asarray(ptrs.data, dtype=np.uint64)
        if mask is not None:
            addrs = addrs[np.broadcast_to(np.asarray(mask.data, dtype=bool), addrs.shape)]
        addrs = addrs.reshape(-1)
        if not addrs.size:
            return
        itemsize = max(1, ptrs.get_element_ty().primitive_bitwidth // 8)
        span = np.searchsorted(self.bases, addrs, side="right").astype(np.int64) - 1
        inside = span >= 0
        span[~inside] = 0
        inside &= addrs + np.uint64(itemsize) <= self.ends[span] if self.ends.size else False
        if not np.all(inside):
            verb = "store" if write and not read else "load" if not write else "atomic"
            raise IllegalAddress(
                f"{self.name}: a {verb} of {itemsize} byte(s) at address "
                f"{int(addrs[~inside][0]):#x}, outside the memory of every tensor argument "
                f"(on a GPU: an illegal memory access; mask the lanes off)")
        for j in np.unique(span):
            offsets = (addrs[span == j] - self.bases[j]).astype(np.int64)
            hits = self.hits[self.order[j]]
            if read:
                hits[0].append((offsets, itemsize))
            if write:
                hits[1].append((offsets, itemsize))

    def exact(self, i: int, write: bool) -> tuple:
        """(start, stop, region) of the bytes of span i the kernel read (or wrote)."""
        parts = self.hits[i][1 if write else 0]
        if not parts:
            return 0, 0, None
        np = self.np
        starts = np.concatenate([o for o, _s in parts])
        stops = np.concatenate([o + s for o, s in parts])
        order = np.argsort(starts, kind="stable")
        starts, stops = starts[order], np.maximum.accumulate(stops[order])
        new = np.ones(starts.size, dtype=bool)
        new[1:] = starts[1:] > stops[:-1]  # a gap: a new run (adjacent runs merge)
        firsts = np.flatnonzero(new)
        lasts = np.append(firsts[1:] - 1, starts.size - 1)
        return from_runs(starts[firsts].tolist(), stops[lasts].tolist())
