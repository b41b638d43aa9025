"""torch.cuda's types on the virtual device: `device` and `device_of` (context managers
that select cuda:0, the only GPU) and the legacy typed constructors (torch.cuda.FloatTensor
and friends). Each stays a type, so isinstance checks and torch's own helpers keep working.
"""

from __future__ import annotations

import torch

from ..errors import NotModelledError

_OriginalDevice = torch.cuda.device

LEGACY_DTYPES = {
    "FloatTensor": torch.float32, "DoubleTensor": torch.float64, "HalfTensor": torch.float16,
    "BFloat16Tensor": torch.bfloat16, "ByteTensor": torch.uint8, "CharTensor": torch.int8,
    "ShortTensor": torch.int16, "IntTensor": torch.int32, "LongTensor": torch.int64,
    "BoolTensor": torch.bool,
}


def _check_index(idx) -> None:
    if idx not in (None, -1, 0):
        raise ValueError(f"the virtual device has one GPU (cuda:0); got device {idx!r}")


class device(_OriginalDevice):
    """torch.cuda.device(d): selects cuda:0 (the only GPU) for the block."""

    def __init__(self, device):
        super().__init__(device)  # torch's own parsing of int / str / torch.device / None
        _check_index(self.idx)

    def __enter__(self):
        self.prev_idx = 0

    def __exit__(self, *exc):
        return False


class device_of(device):
    """torch.cuda.device_of(obj): the device of a tensor or storage; a no-op for CPU ones."""

    def __init__(self, obj):
        super().__init__(obj.get_device() if obj.is_cuda else -1)


class _LegacyType(type):
    # isinstance(t, torch.cuda.FloatTensor): a CUDA tensor of that dtype, as torch says
    def __instancecheck__(cls, obj):
        return (isinstance(obj, torch.Tensor) and obj.is_cuda and obj.dtype == cls.dtype
                and obj.layout == torch.strided)


def _legacy_new(cls, *args, device=None, **kwargs):
    api = f"torch.cuda.{cls.__name__}"
    if kwargs:
        raise NotModelledError(f"{api}({', '.join(kwargs)}=...)")
    if device is not None and torch.device(device).type != "cuda":
        raise RuntimeError(f"{api}: expected a cuda device, got {device!r}")
    if not args:
        return torch.empty(0, dtype=cls.dtype, device="cuda")
    if all(isinstance(a, int) and not isinstance(a, bool) for a in args):
        return torch.empty(args, dtype=cls.dtype, device="cuda")
    if len(args) == 1:
        (arg,) = args
        if isinstance(arg, torch.Size):
            return torch.empty(arg, dtype=cls.dtype, device="cuda")
        if isinstance(arg, torch.Tensor):
            if arg.is_cuda and arg.dtype == cls.dtype:
                return arg  # torch's legacy constructor aliases a tensor of its own type
            raise TypeError(f"expected {api} (got {arg.type()})")
        if not isinstance(arg, (torch.UntypedStorage, torch.TypedStorage, str, bytes)):
            return torch.tensor(arg, dtype=cls.dtype, device="cuda")
    raise NotModelledError(f"{api}({', '.join(type(a).__name__ for a in args)})",
                           "sizes, a torch.Size or a sequence of values are modelled")


def legacy_types() -> dict:
    """torch.cuda.<Name>Tensor stand-ins, one per dtype."""
    return {name: _LegacyType(name, (), {"dtype": dtype, "is_cuda": True,
                                         "__new__": _legacy_new,
                                         "__module__": "torch.cuda"})
            for name, dtype in LEGACY_DTYPES.items()}
