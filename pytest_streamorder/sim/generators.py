"""CUDA random-number generators of the virtual device.

A CUDA generator here is a CPU `torch.Generator` that says it lives on cuda:0: it has its
own state, `manual_seed`/`seed`/`initial_seed`/`get_state`/`set_state` work on it, and CPU
kernels accept it. Random values of device ops are drawn when an op is *issued* (from the
op's `generator=` or the device's default CUDA generator), never when it runs, so they do
not depend on the schedule. The numbers differ from real CUDA's Philox streams, and a state
is the CPU generator's 5056-byte ByteTensor, not CUDA's 16 bytes (seed and offset):
same seed, same numbers; different seeds, different numbers; nothing more is promised.
"""

from __future__ import annotations

import torch

from ..errors import NotModelledError

_OriginalGenerator = torch.Generator
CUDA0 = torch.device("cuda", 0)
DEFAULT_SEED = 67280421310721  # c10's default_rng_seed_val, as every fresh CUDA generator


class CudaGenerator(_OriginalGenerator):
    """torch.Generator(device="cuda") on the virtual device."""

    @property
    def device(self) -> torch.device:
        return CUDA0

    def __repr__(self) -> str:
        return "<torch.Generator device=cuda:0 (virtual)>"

    def graphsafe_get_state(self):
        raise NotModelledError("torch.Generator.graphsafe_get_state (CUDA graphs)")

    def graphsafe_set_state(self, state):
        raise NotModelledError("torch.Generator.graphsafe_set_state (CUDA graphs)")

    def clone_state(self):
        raise NotModelledError("torch.Generator.clone_state (CUDA graphs)")


def new_cuda_generator() -> CudaGenerator:
    g = CudaGenerator(device="cpu")
    g.manual_seed(DEFAULT_SEED)
    return g


def _is_cuda(device) -> bool:
    if device is None:
        return False
    dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if dev.type == "cuda" and (dev.index or 0) != 0:
        raise ValueError(f"the virtual device has one GPU (cuda:0); got device {device!r}")
    return dev.type == "cuda"


class _GeneratorType(type):
    # Generators made before the device started (torch.default_generator) are still
    # torch.Generator instances while it is patched.
    def __instancecheck__(cls, obj):
        return isinstance(obj, _OriginalGenerator)

    def __subclasscheck__(cls, sub):
        return issubclass(sub, _OriginalGenerator)


class Generator(metaclass=_GeneratorType):
    """What torch.Generator is while the virtual device is active."""

    def __new__(cls, device="cpu"):
        if _is_cuda(device):
            return new_cuda_generator()
        return _OriginalGenerator(device)


def draw_seed(vd, kwargs: dict) -> int:
    """The seed of one random device op, drawn at issue time from its generator= (removed
    from kwargs: the queued op runs on a CPU generator seeded with this) or from the
    device's default CUDA generator. At the aten level torch hands over a new wrapper of
    the same generator (its state is shared), so the type was checked before: see
    check_generator_arg."""
    g = kwargs.pop("generator", None)
    return int(torch.randint(0, 2**62, (), generator=g if g is not None else default_generator(vd)))


def check_generator_arg(kwargs: dict) -> None:
    """An op on device tensors takes a CUDA generator only, as on CUDA."""
    g = kwargs.get("generator")
    if g is not None and not isinstance(g, CudaGenerator):
        raise RuntimeError(f"Expected a 'cuda' device type for generator but found "
                           f"'{g.device.type}'")


def default_generator(vd) -> CudaGenerator:
    """The device's default CUDA generator (torch.cuda.default_generators[0])."""
    g = getattr(vd, "_cuda_generator", None)
    if g is None:
        g = vd._cuda_generator = new_cuda_generator()
    return g


def cuda_generator_arg(vd, g):
    """The generator a random factory with device="cuda" draws from on the host."""
    if g is None:
        return default_generator(vd)
    check_generator_arg({"generator": g})
    return g
