"""Storages of virtual CUDA tensors, and torch.save / torch.load of CUDA tensors.

`x.untyped_storage()` / `x.storage()` of a device tensor give a read-only stand-in: its
size, bytes, data pointer (the block's fake address, as data_ptr() gives), device, and a
blocking copy to the host (`.cpu()`, `.tolist()`). Anything that would change a device
storage behind the model's back (resize_, set_, share_memory_, ...) is refused by name.

torch.save writes a CUDA tensor as torch does on a GPU: its bytes under the location tag
"cuda:0" (a blocking D2H copy first). torch.load under the virtual device restores a
"cuda" location (or map_location="cuda") onto the virtual device with a blocking H2D
copy; without the virtual device such a file loads like any CUDA checkpoint. One
difference: tensors that shared a storage in the file are separate copies after loading.
"""

from __future__ import annotations

import torch

from ..errors import NotModelledError
from .runtime import current

CUDA0 = torch.device("cuda", 0)


class VirtualUntypedStorage:
    """The untyped storage of a virtual CUDA tensor (what untyped_storage() returns)."""

    device = CUDA0
    is_cuda = True
    is_sparse = False

    def __init__(self, tensor):
        self._tensor = tensor  # keeps the block alive, as a storage does

    def nbytes(self) -> int:
        return self._tensor._vs.nbytes

    def size(self) -> int:
        return self.nbytes()

    __len__ = size

    def element_size(self) -> int:
        return 1

    def data_ptr(self) -> int:
        return self._tensor._vs.block.address

    def _flat(self, dtype=torch.uint8):
        """The whole storage as a flat device tensor of dtype (a view: no device work)."""
        t = self._tensor
        return torch.as_strided(t, (self.nbytes() // dtype.itemsize,), (1,), 0) \
            if t.dtype == dtype else _byte_view(t).view(dtype)

    def cpu(self):
        return self._flat().cpu().untyped_storage()

    def tolist(self):
        return self._flat().tolist()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise NotModelledError(f"UntypedStorage.{name} of a virtual CUDA tensor",
                               "nbytes, size, data_ptr, device, element_size, cpu and "
                               "tolist are modelled")

    def __repr__(self) -> str:
        return f"<virtual cuda:0 UntypedStorage of {self.nbytes()} bytes>"


class VirtualTypedStorage(VirtualUntypedStorage):
    """`x.storage()` of a virtual CUDA tensor: the same bytes, counted in x's dtype."""

    def __init__(self, tensor):
        super().__init__(tensor)
        self.dtype = tensor.dtype

    def size(self) -> int:
        return self.nbytes() // self.dtype.itemsize

    __len__ = size

    def element_size(self) -> int:
        return self.dtype.itemsize

    def untyped(self) -> VirtualUntypedStorage:
        return VirtualUntypedStorage(self._tensor)

    _untyped_storage = property(untyped)

    def cpu(self):
        return self._flat(self.dtype).cpu().storage()

    def tolist(self):
        return self._flat(self.dtype).tolist()


def _byte_view(t):
    base = torch.as_strided(t, (t._vs.nbytes // t.dtype.itemsize,), (1,), 0)
    return base.view(torch.uint8)


# --- torch.save / torch.load ---------------------------------------------------------

_SAVED_FROM_DEVICE: set[int] = set()  # host storages (data_ptr) saved for device tensors
_LOADED_FOR_DEVICE: set[int] = set()  # host storages torch.load restored for the device


def reduce_device_tensor(t):
    """Tensor.__reduce_ex__ of a device tensor while torch.save pickles it: a host copy
    whose storage is tagged "cuda:0"."""
    host = t.detach().cpu()
    _SAVED_FROM_DEVICE.add(host.untyped_storage().data_ptr())
    return host.__reduce_ex__(2)


def _tag(storage):
    try:
        if storage.device.type == "cpu" and storage.data_ptr() in _SAVED_FROM_DEVICE:
            return "cuda:0"
    except Exception:
        return None
    return None


def _restore(storage, location: str):
    if current() is None or not location.startswith("cuda"):
        return None  # not ours: torch's own deserializers decide
    _LOADED_FOR_DEVICE.add(storage.data_ptr())
    return storage


def rebuild_hook(original):
    """torch._utils._rebuild_tensor, moving tensors restored for the device onto it."""
    def _rebuild_tensor(storage, storage_offset, size, stride):
        t = original(storage, storage_offset, size, stride)
        if current() is not None and t.device.type == "cpu" and \
                t.untyped_storage().data_ptr() in _LOADED_FOR_DEVICE:
            return t.to(CUDA0)
        return t
    return _rebuild_tensor


_registered = False


def register_serialization() -> None:
    """Register the "cuda:0" tagger and restorer with torch.serialization (once per
    process; both answer None, i.e. "not mine", when no virtual device is active)."""
    global _registered
    if not _registered:
        torch.serialization.register_package(1, _tag, _restore)
        _registered = True


def map_location(map_location):
    """torch.load's map_location under the virtual device: "cuda"/cuda devices restore
    onto the virtual device (through _restore); anything else is torch's."""
    if isinstance(map_location, (str, torch.device)) and torch.device(map_location).type == "cuda":
        return lambda storage, location: _restore(storage, "cuda")
    return map_location


_saving = 0  # > 0 while torch.save pickles (Tensor.__reduce_ex__ of a device tensor)


def saving() -> bool:
    return _saving > 0


def install(patches) -> None:
    """Patch torch.save / torch.load / torch._utils._rebuild_tensor while the device is on."""
    import torch._utils

    register_serialization()
    original_save, original_load = torch.save, torch.load

    def save(obj, f, *args, **kwargs):
        global _saving
        _saving += 1
        try:
            return original_save(obj, f, *args, **kwargs)
        finally:
            _saving -= 1
            if not _saving:
                _SAVED_FROM_DEVICE.clear()

    def load(f, map_location=None, *args, **kwargs):
        try:
            return original_load(f, globals()["map_location"](map_location), *args, **kwargs)
        finally:
            _LOADED_FOR_DEVICE.clear()

    save.__doc__, load.__doc__ = original_save.__doc__, original_load.__doc__
    patches.set(torch, "save", save)
    patches.set(torch, "load", load)
    patches.set(torch._utils, "_rebuild_tensor", rebuild_hook(torch._utils._rebuild_tensor))
