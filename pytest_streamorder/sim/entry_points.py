"""The torch entry points that make device memory or pinned memory from host arguments,
patched while a virtual device is attached, so that the function mode can stay off.

Calls with a device tensor argument reach the device through DeviceTensor's
__torch_function__. What has none: factories by device (`torch.zeros(3, device="cuda")`,
`torch.tensor(data, device="cuda")`, `nn.Linear(..., device="cuda")`), `pin_memory=True`,
`t.cuda()` / `t.to("cuda")` / `t.pin_memory()` / `t.is_pinned()` of a host tensor,
`t.new_zeros(..., device="cuda")`, and `t.numpy()` of pinned memory (a view to follow).
Their C++ would not do it right on a CPU build (torch.tensor's copy runs below Python
dispatch and stops at a missing CUDA kernel; arange/eye fill a zero-size `out=` through
the CUDA key, one op at a time; pin_memory() asks for an accelerator; is_pinned() says
False), so these names are wrapped: a call that can make device or pinned memory goes
to interception.handle, the one description of each fact; any other call goes straight
to torch (a host factory pays one Python call).

torch-namespace functions are wrapped where torch.* holds them (what `torch.zeros(...)`
finds, also inside torch.nn); a reference taken before the device attached
(`from torch import zeros`) is not: such a call reaches the CUDA key (cuda_key.py), which
makes plain factories and refuses the rest by name. Tensor methods are wrapped on
torch.Tensor: C++ then passes the wrapper to torch-function handlers as `func`, which
`handle` maps back to the original (`originals`). The wrappers are registered as
TorchScript builtins, so scripting code that calls them still compiles.
"""

from __future__ import annotations

import torch
import torch.utils._device as _device_module

from .runtime import current

_NO_SUBCLASS = torch._C.DisableTorchFunctionSubclass

# Tensor methods that make device or pinned memory from a host tensor, and numpy(): a
# NumPy view of pinned memory must be one the model follows (ops/numpy_views.py) even if
# it is made while no copy is in flight (the function mode is off then).
METHODS = ("cuda", "to", "pin_memory", "is_pinned", "new_tensor", "new_empty",
           "new_empty_strided", "new_zeros", "new_ones", "new_full", "numpy")

_functions: tuple | None = None  # torch-namespace names taking device= or pin_memory=


def _factory_names() -> tuple:
    """torch.* functions whose aten schemas take device= or pin_memory= (~15 ms, once)."""
    global _functions
    if _functions is None:
        vf = torch._C._VariableFunctions
        names = {"tensor", "as_tensor", "asarray"}  # parsed in Python C code, no aten op
        for name in dir(vf):
            if name.startswith("_") or getattr(torch, name, None) is not getattr(vf, name):
                continue
            packet = getattr(torch.ops.aten, name, None)
            if packet is None:
                continue
            for overload in packet.overloads():
                if any(a.name in ("device", "pin_memory")
                       for a in getattr(packet, overload)._schema.arguments):
                    names.add(name)
                    break
        _functions = tuple(sorted(n for n in names if hasattr(torch, n)))
    return _functions


def _not_host(device) -> bool:
    """Whether a device= value may name the CUDA device (a cheap test: host wins fast)."""
    if device is None or device == "cpu":
        return False
    return not (isinstance(device, torch.device) and device.type == "cpu")


def _default_device():
    """The device of torch's DeviceContext, if one is pushed (it always sits at the
    bottom of the torch-function mode stack), else None. Two C calls when none is."""
    if not torch._C._len_torch_function_stack():
        return None
    bottom = torch._C._get_function_stack_at(0)
    return bottom.device if isinstance(bottom, _device_module.DeviceContext) else None


def _function_entry(original, handle, mode_on, by_default_device: bool):
    def entry(*args, **kwargs):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        device = kwargs.get("device")
        if device is None and by_default_device:
            # `with torch.device("cuda"):` / torch.set_default_device("cuda"): torch's
            # DeviceContext would add device= to this call; it is ours to add, here.
            default = _default_device()
            if default is not None and default.type != "cpu":
                kwargs = dict(kwargs, device=default)
        if kwargs and (_not_host(kwargs.get("device")) or kwargs.get("pin_memory")):
            vd = current()
            if vd is not None and vd.active and not mode_on():
                with _NO_SUBCLASS():
                    return handle(vd, original, args, kwargs)
        return original(*args, **kwargs)
    entry.__name__ = entry.__qualname__ = original.__name__
    entry.__doc__ = original.__doc__
    entry.__wrapped__ = original
    return entry


def _method_entry(original, handle, mode_on):
    def entry(self, *args, **kwargs):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        vd = current()
        if vd is None or not vd.active or mode_on() or self.is_meta \
                or not torch._C._is_torch_function_enabled():
            # Meta tensors (shape computations, ours and torch's) and code that turned
            # torch functions off make no device or pinned memory: torch as it is.
            return original(self, *args, **kwargs)
        with _NO_SUBCLASS():
            return handle(vd, original, (self, *args), kwargs)
    entry.__name__ = entry.__qualname__ = original.__name__
    entry.__doc__ = original.__doc__
    entry.__wrapped__ = original
    return entry


def install(handle, mode_on, originals: dict) -> list:
    """Wrap the entry points; returns what `uninstall` restores. `originals` gets
    wrapper -> original for each wrapped method. Where `mode_on()` (one of our function
    modes is pushed in the calling thread), a wrapper calls torch at once: the mode
    handles the call, once."""
    from torch.jit._builtins import _find_builtin, _register_builtin

    # torch's DeviceContext caches its set of factories at first use: fill the cache with
    # the originals now (with our wrappers in it, `with torch.device(...)` would miss
    # every factory, also after we detach).
    constructors = _device_module._device_constructors()
    saved = []
    for name in _factory_names():
        original = getattr(torch, name)
        saved.append((torch, name, original))
        wrapped = _function_entry(original, handle, mode_on, original in constructors)
        builtin = _find_builtin(original)
        if builtin is not None:
            _register_builtin(wrapped, builtin)
        setattr(torch, name, wrapped)
    for name in METHODS:
        saved.append((torch.Tensor, name, torch.Tensor.__dict__.get(name)))
        wrapped = _method_entry(getattr(torch.Tensor, name), handle, mode_on)
        originals[wrapped] = getattr(torch.Tensor, name)
        setattr(torch.Tensor, name, wrapped)
    return saved


def uninstall(saved: list, originals: dict) -> None:
    for owner, name, original in reversed(saved):
        if owner is torch.Tensor:
            originals.pop(owner.__dict__.get(name), None)
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        else:
            setattr(owner, name, original)
