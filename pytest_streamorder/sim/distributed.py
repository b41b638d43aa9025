"""torch.distributed and torch.cuda.nccl under the virtual device: NCCL is there, as in a
CUDA build, and refused by name where it would run.

A CPU build has no NCCL, so `init_process_group("nccl")` (vLLM's `dist_init` fixture,
SGLang's model runner at tp_size=1) would fail with torch's "Distributed package doesn't
have NCCL built in", `torch.cuda.nccl.version()` with an AttributeError, and
`is_nccl_available()` / `torch.cuda.nccl.is_available()` would send code down its
no-NCCL branch: CPU-build errors or a silent non-CUDA path. While the device is
attached both availability checks answer as on a CUDA build, `torch.cuda.nccl.version()`
gives the virtual build's NCCL version, and making an NCCL process group or running a
torch.cuda.nccl collective raises NotModelledError naming it: collectives and NCCL's own
streams are not modelled yet. Gloo process groups (CPU tensors) work as without the plugin.
"""

from __future__ import annotations

import torch
import torch.cuda.nccl as nccl

from .cuda_net import refuse_function
from .gpu_identity import NCCL_VERSION
from .patching import restore, saved

_HINT = ("the virtual device does not model NCCL collectives or their internal streams "
         "yet; mark such a test @pytest.mark.no_streamorder (it then runs as without the "
         "plugin), run it on a real GPU, or use the gloo backend for CPU tensors")
_PG_NCCL = "torch.distributed's NCCL backend (ProcessGroupNCCL)"
_COLLECTIVES = ("unique_id", "init_rank", "all_reduce", "reduce", "broadcast", "all_gather",
                "reduce_scatter")


class VirtualProcessGroupNCCL:
    """What a CUDA build's torch.distributed.ProcessGroupNCCL is to code that only names
    it (isinstance checks, `ProcessGroupNCCL.Options`); making one is refused."""

    Options = staticmethod(refuse_function(_PG_NCCL, _HINT))

    def __init__(self, *args, **kwargs):
        self.Options()


def _nccl_available(tensors) -> bool:
    """torch.cuda.nccl.is_available as on a CUDA build: dense, contiguous CUDA tensors,
    one per device."""
    devices = [t.get_device() for t in tensors
               if t.is_cuda and not t.is_sparse and t.is_contiguous()]
    return len(devices) == len(tensors) and len(set(devices)) == len(devices)


def install():
    """Make NCCL known; returns the function that undoes it (None: nothing to do,
    torch.distributed is absent or torch has NCCL of its own)."""
    if not torch.distributed.is_available():
        return None
    c10d = torch.distributed.distributed_c10d
    if c10d._NCCL_AVAILABLE:
        return None
    patches = [(c10d, "_NCCL_AVAILABLE", True),
               (c10d, "ProcessGroupNCCL", VirtualProcessGroupNCCL),
               (torch.distributed, "ProcessGroupNCCL", VirtualProcessGroupNCCL),
               (nccl, "is_available", _nccl_available),
               (nccl, "version", lambda: NCCL_VERSION)]
    patches += [(nccl, name, refuse_function(f"torch.cuda.nccl.{name}", _HINT))
                for name in _COLLECTIVES]
    originals = [(owner, name, saved(owner, name)) for owner, name, _value in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)

    def undo():
        for owner, name, value in reversed(originals):
            restore(owner, name, value)
    return undo
