"""The net under the virtual device: every part of torch.cuda that is not modelled fails
with NotModelledError naming it, never with a raw CPU-build error.

Two lists, both computed when the device starts (nothing hand-copied from torch):
- the `torch._C._cuda*` entry points that torch's own Python source calls (a CPU build
  lacks most of them: torch's CUDA branches would die with an AttributeError);
- torch.cuda's public callables (functions and types defined in torch.cuda).
Each one that the virtual device neither replaces nor lists in MODELLED_ORIGINALS (torch's
own Python that runs correctly over the modelled entry points) is replaced by a refusal,
in torch.cuda and in every submodule that binds the same object. A refused type stays a
type: isinstance checks against it still answer for the original.
"""

from __future__ import annotations

import functools
import pathlib
import re

import torch

from ..errors import NotModelledError

HINT = "run this test with @pytest.mark.no_streamorder or on a real GPU"

# torch.cuda functions whose own Python runs unchanged on the virtual device, over the
# entry points cuda_api.py and accelerator.py answer.
MODELLED_ORIGINALS = frozenset({
    # memory statistics of the allocator model
    "memory_allocated", "max_memory_allocated", "memory_reserved", "max_memory_reserved",
    "memory_cached", "max_memory_cached", "memory_stats", "memory_stats_as_nested_dict",
    "reset_peak_memory_stats", "reset_max_memory_allocated", "reset_max_memory_cached",
    "reset_accumulated_memory_stats", "memory_summary", "empty_cache",
    "host_memory_stats", "host_memory_stats_as_nested_dict", "reset_peak_host_memory_stats",
    "reset_accumulated_host_memory_stats", "get_allocator_backend",
    # the default CUDA generator (torch.cuda.default_generators)
    "manual_seed", "manual_seed_all", "seed", "seed_all", "initial_seed", "get_rng_state",
    "set_rng_state", "get_rng_state_all", "set_rng_state_all",
    # the rest
    "set_sync_debug_mode", "get_sync_debug_mode", "StreamContext", "get_arch_list",
    "get_gencode_flags",
})

_C_NAME = re.compile(r"_C\.(_cuda\w*)")


@functools.lru_cache(maxsize=None)
def referenced_c_entry_points() -> frozenset:
    """Every torch._C._cuda* name torch's Python source mentions (about 0.2 s, once)."""
    names = set()
    for path in pathlib.Path(torch.__file__).parent.rglob("*.py"):
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        if "_C._cuda" in text:
            names.update(_C_NAME.findall(text))
    return frozenset(names)


def refuse_function(api: str, hint: str = HINT):
    def refused(*args, **kwargs):
        raise NotModelledError(api, hint)
    refused.__name__ = refused.__qualname__ = api.rsplit(".", 1)[-1]
    refused.__streamorder_refused__ = api
    return refused


class _RefusedType(type):
    def __instancecheck__(cls, obj):
        return isinstance(obj, cls._original)

    def __subclasscheck__(cls, sub):
        return issubclass(sub, cls._original)


def refuse_type(api: str, original: type, hint: str = HINT) -> type:
    """A type that refuses to be instantiated; isinstance asks `original`."""
    def __new__(cls, *args, **kwargs):
        raise NotModelledError(api, hint)
    return _RefusedType(original.__name__, (), {
        "__new__": __new__, "_original": original, "__module__": original.__module__,
        "__streamorder_refused__": api, "__doc__": f"{api}: not modelled by the virtual device"})


def refuse(api: str, original, hint: str = HINT):
    if isinstance(original, type):
        return refuse_type(api, original, hint)
    return refuse_function(api, hint)


def _is_cuda_api(value) -> bool:
    """A callable torch.cuda defines (not typing helpers or exceptions it re-exports)."""
    if not callable(value) or isinstance(value, type(torch)):
        return False
    if isinstance(value, type) and issubclass(value, BaseException):
        return False  # `except torch.cuda.OutOfMemoryError` must keep working
    return (getattr(value, "__module__", None) or "").startswith("torch.cuda")


def is_refused(value) -> bool:
    return hasattr(value, "__streamorder_refused__")


_MADE: dict = {}  # (api, id(original)) -> (original, its refusal): made once per process


def _refusal_of(api: str, original):
    """refuse(api, original), the same object at every attach (a device per schedule
    would otherwise build ~100 closures and classes each time)."""
    key = (api, id(original))
    hit = _MADE.get(key)
    if hit is None or hit[0] is not original:
        hit = _MADE[key] = (original, refuse_function(api) if original is None
                            else refuse(api, original))
    return hit[1]


def install(patches, modules, modelled: set, modelled_c: set) -> None:
    for name in sorted(referenced_c_entry_points() - modelled_c):
        current = getattr(torch._C, name, None)
        if current is None or (callable(current) and not isinstance(current, type)):
            patches.set(torch._C, name, _refusal_of(f"torch._C.{name}", None))
    for name in sorted(dir(torch.cuda)):
        if name.startswith("_") or name in modelled or name in MODELLED_ORIGINALS:
            continue
        value = getattr(torch.cuda, name)
        if not _is_cuda_api(value) or is_refused(value):
            continue
        patches.set_everywhere(modules, name, value, _refusal_of(f"torch.cuda.{name}", value))
