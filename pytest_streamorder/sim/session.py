"""The virtual CUDA runtime of a whole `pytest --streamorder` session.

From the first conftest.py on (the plugin installs it in pytest_load_initial_conftests),
`torch.cuda.is_available()` is True, `torch.version.cuda` is CUDA_VERSION, and there is
one named virtual GPU (gpu_identity.GPUS), so import-time checks such as SGLang's
`is_cuda()` take their CUDA paths. There is one VirtualDevice for the session: work done
at import time, in conftest.py, in fixtures of any scope and in setUpClass runs on it.
Each schedule of a test is a `Run` on that device (device.py); between runs queued work
is drained without a happens-before edge.

`uninstall()` leaves the process as it found it (pytester runs pytest in-process): the
torch.cuda attributes, `torch.version.cuda`, the dispatch modes and the active backend.
The one thing that stays is the native CUDA device guard (cuda_guard.py), which cannot be
unregistered; it only matters for CUDA tensors, which a CPU build has none of.
"""

from __future__ import annotations

import torch

from . import cuda_guard
from .gpu_identity import CUDA_VERSION, GPUS
from .device import DEFAULT_MAX_OPS, Run, VirtualDevice
from .interception import settle as settle_interception
from .runtime import set_guard_missing

_MISSING = object()


class SessionRuntime:
    """The session's virtual device and what was patched to show it."""

    def __init__(self, capability: str = "sm80", seed: int = 0,
                 max_ops: int | None = DEFAULT_MAX_OPS):
        self.gpu = GPUS[capability]
        self.seed = seed
        self.max_ops = max_ops
        self.device: VirtualDevice | None = None
        self.guard_missing = ""
        self.suspended = False
        self._saved_version = _MISSING

    # --- on and off ---------------------------------------------------------------

    def install(self) -> "SessionRuntime":
        # cpp_extension reads torch.version.cuda: the guard is built while it is still None.
        self.guard_missing = cuda_guard.install()
        set_guard_missing(self.guard_missing)
        device = VirtualDevice(seed=self.seed, policy="eager", max_ops=self.max_ops)
        device.gpu = self.gpu
        device.session = True
        device._used = True  # never a `with` block of its own
        self.device = device
        self._show_cuda()
        try:
            device.attach()
        except BaseException:
            self._hide_cuda()
            raise
        return self

    def uninstall(self) -> None:
        device, self.device = self.device, None
        try:
            if device is not None and device.active:
                device.discard_queued()
                device.detach()
        finally:
            self._hide_cuda()
            set_guard_missing("")

    def _show_cuda(self) -> None:
        if self._saved_version is _MISSING:
            self._saved_version = torch.version.cuda
        torch.version.cuda = CUDA_VERSION

    def _hide_cuda(self) -> None:
        if self._saved_version is not _MISSING:
            torch.version.cuda = self._saved_version
            self._saved_version = _MISSING

    def suspend(self) -> None:
        """A no_streamorder test runs on the CPU build as without the plugin (and may open
        a `virtual_device()` of its own); the session device keeps its state."""
        device = self.device
        device.discard_queued()
        device.detach()
        self._hide_cuda()
        self.suspended = True

    def resume(self) -> None:
        self.suspended = False
        self._show_cuda()
        self.device.attach()
        self.device.start_run(self.idle_run())

    # --- runs -----------------------------------------------------------------------

    def idle_run(self) -> Run:
        """Work outside any test's schedule (import time, collection, between tests):
        eager, and a race still raises. Between tests no torch call of ours is in
        progress, so the function mode goes off here if nothing needs it any more."""
        if self.device is not None and self.device.active:
            settle_interception(self.device)
        return Run(seed=self.seed, policy="eager", max_ops=self.max_ops)
