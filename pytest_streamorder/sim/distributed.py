"""torch.distributed under the virtual device: the NCCL backend is there, as in a CUDA
build, and refused by name when a process group asks for it.

A CPU build has no NCCL, so `init_process_group("nccl")` (vLLM's `dist_init` fixture,
SGLang's model runner at tp_size=1) would fail with torch's "Distributed package doesn't
have NCCL built in", and `is_nccl_available()` would send code down its no-NCCL branch:
a CPU-build error or a silent non-CUDA path. While the device is attached,
`is_nccl_available()` says True and creating an NCCL process group raises
NotModelledError naming it: collectives and NCCL's own streams are not modelled yet.
Gloo process groups (CPU tensors) work as they do without the plugin.
"""

from __future__ import annotations

import torch

from ..errors import NotModelledError
from .patching import restore, saved

_HINT = ("the virtual device does not model NCCL collectives or their internal streams "
         "yet; mark such a test @pytest.mark.no_streamorder (it then runs as without the "
         "plugin), run it on a real GPU, or use the gloo backend for CPU tensors")


def _refuse(*args, **kwargs):
    raise NotModelledError("torch.distributed's NCCL backend (ProcessGroupNCCL)", _HINT)


class VirtualProcessGroupNCCL:
    """What a CUDA build's torch.distributed.ProcessGroupNCCL is to code that only names
    it (isinstance checks, `ProcessGroupNCCL.Options`); making one is refused."""

    Options = staticmethod(_refuse)

    def __init__(self, *args, **kwargs):
        _refuse()


def install():
    """Make the NCCL backend known; returns the function that undoes it (None: nothing
    to do, torch.distributed is absent or has NCCL of its own)."""
    if not torch.distributed.is_available():
        return None
    c10d = torch.distributed.distributed_c10d
    if c10d._NCCL_AVAILABLE:
        return None
    patches = [(c10d, "_NCCL_AVAILABLE", True),
               (c10d, "ProcessGroupNCCL", VirtualProcessGroupNCCL),
               (torch.distributed, "ProcessGroupNCCL", VirtualProcessGroupNCCL)]
    originals = [(owner, name, saved(owner, name)) for owner, name, _value in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)

    def undo():
        for owner, name, value in reversed(originals):
            restore(owner, name, value)
    return undo
