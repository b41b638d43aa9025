"""Custom ops: kernels registered with `torch.library`, and stand-ins for the extension
modules (sgl_kernel, vllm._C) that register them but do not import on a CPU machine.

An op registered with torch.library is an op like any aten op to both backends: its
schema says what it reads and writes (`Tensor(a!)` is written; ops/schema.py), a fake
(meta) kernel gives its output shapes, and on the virtual device its CPU kernel computes
it when its stream runs it. What this file adds is one call for conftest.py that makes
such an op exist on a CPU machine, and a module stand-in for the extension that would
have registered it:

    import pytest_streamorder as so
    so.custom_op("sgl_kernel::rmsnorm(Tensor(a!) out, Tensor x, Tensor w, float eps) -> ()",
                 cpu_impl=rmsnorm_reference)
    so.stand_in_module("sgl_kernel", rmsnorm=lambda out, x, w, eps:
                       torch.ops.sgl_kernel.rmsnorm(out, x, w, eps))

On a machine where the real extension imports (a GPU), both calls change nothing the
real kernels do: an existing op keeps its kernels, and an importable module is not
replaced.
"""

from __future__ import annotations

import importlib
import sys
import types

import torch

from ..errors import NotModelledError

_LIBRARIES: list = []  # torch.library.Library objects unregister when collected: keep them


def _split(schema: str) -> tuple[str, str, str]:
    """'ns::name.overload(args) -> ret' -> ('ns', 'name.overload', 'ns::name.overload')."""
    head = schema.split("(", 1)[0].strip()
    if "::" not in head:
        raise ValueError(f"custom_op: the schema must name its namespace, as in "
                         f"'my_ext::my_op(Tensor(a!) out, Tensor x) -> ()'; got {schema!r}")
    ns, name = head.split("::", 1)
    return ns, name, head


def _exists(ns: str, name: str) -> bool:
    base, _, overload = name.partition(".")
    try:
        packet = getattr(getattr(torch.ops, ns), base)
        getattr(packet, overload or "default")
    except (AttributeError, RuntimeError):
        return False
    return True


def has_cpu_kernel(qualname: str) -> bool:
    """Whether the op computes on CPU tensors (its own CPU kernel or a composite one)."""
    return torch._C._dispatch_has_computed_kernel_for_dispatch_key(qualname, "CPU")


def custom_op(schema: str, cpu_impl=None, fake=None):
    """Make the op `schema` names exist with a CPU reference kernel; returns torch.ops' op.

    schema: 'namespace::name(arguments) -> returns', in torch's schema language; mark the
    tensors the op writes `Tensor(a!)` (a, b, ... one letter each): that is how the race
    detector knows what it writes. cpu_impl: computes the op on CPU tensors (the virtual
    device runs it on the device memory when the op's stream runs it); it is registered
    for the CPU key only, so a real GPU's kernel is untouched. fake: the op's output shapes
    from its inputs (torch.library.register_fake); ops that return only `()` need none.
    An op that already exists keeps its definition and kernels; only what it lacks is
    added (the CPU kernel, the fake).
    """
    ns, name, qualname = _split(schema)
    lib = torch.library.Library(ns, "FRAGMENT")
    if not _exists(ns, name):
        lib.define(schema.split("::", 1)[1])
    if cpu_impl is not None and not has_cpu_kernel(qualname):
        lib.impl(name, cpu_impl, "CPU")
    if fake is not None and not _has_fake(qualname):
        torch.library.register_fake(qualname, fake, lib=lib)
    _LIBRARIES.append(lib)
    base, _, overload = name.partition(".")
    return getattr(getattr(getattr(torch.ops, ns), base), overload or "default")


def _has_fake(qualname: str) -> bool:
    return (torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "Meta")
            or torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CompositeImplicitAutograd")
            or torch._library.simple_registry.singleton.find(qualname).fake_impl.kernel is not None)


class _StandIn(types.ModuleType):
    """A module standing in for an extension: what was declared, else a named error."""

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise NotModelledError(
            f"{self.__name__}.{attr}",
            f"{self.__name__} is a pytest-streamorder stand-in (stand_in_module in "
            f"conftest.py); declare {attr}=... there, with its ops registered by custom_op",
            by="the stand-in module")


def stand_in_module(name: str, replace: bool = False, **attributes) -> types.ModuleType:
    """Put a stand-in for the extension module `name` into sys.modules, unless the real
    one imports (replace=True: always). `attributes` become the module's attributes
    (Python wrappers that call the ops custom_op registered, constants); any other
    attribute read fails with NotModelledError naming it. Parent packages that do not
    import get empty stand-ins of their own. Returns the module in use."""
    if not replace:
        try:
            return importlib.import_module(name)
        except Exception:  # an extension built for CUDA fails in many ways on a CPU machine
            sys.modules.pop(name, None)
    module = _StandIn(name, f"pytest-streamorder stand-in for {name}")
    module.__dict__.update(attributes)
    parent_name, _, leaf = name.rpartition(".")
    if parent_name:
        parent = sys.modules.get(parent_name)
        if parent is None:
            try:
                parent = importlib.import_module(parent_name)
            except Exception:
                parent = stand_in_module(parent_name, replace=True)
        setattr(parent, leaf, module)
    sys.modules[name] = module
    return module


def refuse_without_cpu_kernel(func) -> None:
    """The virtual device computes an op with its CPU kernel: a custom op without one
    (an extension's CUDA-only op) is refused by name before it is issued."""
    if not has_cpu_kernel(func.name()):
        raise NotModelledError(
            f"custom op {func.name()}",
            "it has no CPU kernel; register a CPU reference in conftest.py with "
            "pytest_streamorder.custom_op(schema, cpu_impl=...)")
