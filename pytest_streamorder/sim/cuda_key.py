"""The CUDA dispatch key of a CPU build, while the virtual device is attached.

Device tensors reach the virtual device through their __torch_dispatch__. What does not:
tensors that C++ composites create *by device* with no tensor argument to dispatch on,
such as the Python scalar of `torch.where(mask, t, 0.0)` (wrapped as a 0-dim tensor on
t's device) or the causal mask of `F.scaled_dot_product_attention(..., is_causal=True)`.
Those factories go straight to the CUDA backend key, where a CPU build has no kernel
("Could not run 'aten::empty.memory_format' with arguments from the 'CUDA' backend").

(Factories called by Python with device="cuda" do not come here: the patched entry
points, entry_points.py, hand them to interception.handle first. This catches what C++
makes by device, and factories through a reference to torch.* taken before the device
attached.)

A backend fallback for the CUDA key (one Python function for every op without a CUDA
kernel, which on a CPU build is every op) catches them: a factory becomes device memory
on the current stream, as on CUDA; anything else is refused by name.
"""

from __future__ import annotations

import torch

from ..errors import NotModelledError
from ..host_threads import RUNTIME_LOCK
from ..model import Site
from ..ops.catalog import EMPTY_OPS
from .generators import draw_seed
from .interception import upload
from .runtime import current

def _takes_no_tensor(op, args, kwargs) -> bool:
    return not any(isinstance(v, torch.Tensor) for v in (*args, *kwargs.values()))


def _fallback(op, *args, **kwargs):
    __tracebackhide__ = True  # pytest: show the user's frames, not ours
    vd = current()
    if vd is None or not vd.active:
        raise NotImplementedError(f"Could not run '{op}' with arguments from the 'CUDA' backend "
                                  f"(a CPU build of torch, and no virtual device is active)")
    if torch._C._dispatch_tls_is_dispatch_key_excluded(torch._C.DispatchKey.Python):
        # Made below Python dispatch (torch.tensor(data, device="cuda") copies its data
        # there): nothing done with the tensor would reach us, a silent wrong path or an
        # internal assert of torch's. Our entry points never take this route.
        raise NotModelledError(
            f"{op} by device below Python dispatch",
            "torch.tensor/as_tensor(..., device='cuda') called through a reference taken "
            "before the virtual device attached (`from torch import tensor` at import "
            "time): call torch.tensor(...)")
    if not _takes_no_tensor(op, args, kwargs):
        # A CUDA-keyed tensor that is not the virtual device's (made by C++ behind our
        # back): running it would be a silent wrong path.
        raise NotModelledError(f"{op} on a CUDA tensor the virtual device did not make")
    with RUNTIME_LOCK:
        return _factory(vd, op, args, kwargs, Site.here(2))


def _factory(vd, op, args, kwargs, site: Site):
    """A factory by device: computed on the host now, then device work on the current
    stream that writes the fresh memory (uninitialised memory: no work)."""
    kw = dict(kwargs, device=torch.device("cpu"))
    kw.pop("pin_memory", None)
    seeded = torch.Tag.nondeterministic_seeded in op.tags
    if seeded:  # drawn from the device's CUDA generator, as the op would on CUDA
        seed = draw_seed(vd, kw)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            value = op(*args, **kw)
    else:
        value = op(*args, **kw)
    name = str(op)
    out = vd.new_tensor(tuple(value.shape), value.stride(), value.storage_offset(), value.dtype,
                        None, site, name)
    if op in EMPTY_OPS:
        return out
    upload(vd, out, value, site, name, blocking=False, snapshot=False)
    return out


_KEPT = None  # the registration kept for the process on a CPU build (see install)


def install():
    """Register the fallback; returns the handle uninstall() takes.

    Registering and destroying it costs ~1.6 ms, half of an empty virtual_device()
    block. On a CPU build, where no op has a CUDA kernel, it is registered once and
    kept: with no device active it raises NotImplementedError as the missing kernel
    would (and torch.cuda's own "not compiled with CUDA" checks come first anyway).
    A CUDA build gets it only while attached, so its real kernels' errors stay its own."""
    global _KEPT
    if not torch.backends.cuda.is_built():
        if _KEPT is None:
            _KEPT = torch.library.Library("_", "IMPL")
            _KEPT.fallback(_fallback, "CUDA")
        return None
    lib = torch.library.Library("_", "IMPL")
    lib.fallback(_fallback, "CUDA")
    return lib


def uninstall(lib) -> None:
    if lib is not None:  # None: the kept registration of a CPU build
        lib._destroy()
