"""A native CUDA device guard for CPU builds of torch, so that no C++ path aborts the process.

Some of torch's C++ (the autograd kernels of a module whose parameters require grad, for
one) opens a `c10::DeviceGuard` for every CUDA tensor it sees. A CPU build has no CUDA
guard implementation registered, and the lookup throws from a `noexcept` context:
`terminate called ... PyTorch is not linked with support for cuda devices`, and pytest
dies with no report. Registering c10's own `FakeGuardImpl` for the CUDA device type turns
those paths back into ordinary Python exceptions (or working code).

The guard is a ten-line extension built with torch's cpp_extension at first use (about
15 s with g++ and ninja) and cached in the temp folder, per user, torch version and
Python (STREAMORDER_BUILD_DIR overrides it): not under $HOME, which test runners such as
pytester move, so that every process of a session finds the one build. It must be built while `torch.version.cuda` is
still the CPU build's None: cpp_extension reads it to choose its flags. Without a
compiler, `install()` returns the reason instead, and callers fail the affected test
with a named error before torch reaches the C++ that would abort.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

# The extension's name carries a version: change the source, bump it.
_EXTENSION = "streamorder_cuda_guard_v1"

_SOURCE = r"""
#include <torch/extension.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/FakeGuardImpl.h>

// Register a guard only where none exists: on a CUDA build the real one stays.
bool install() {
  if (!c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA)) {
    static c10::impl::FakeGuardImpl<c10::DeviceType::CUDA> fake;
    c10::impl::registerDeviceGuard(c10::DeviceType::CUDA, &fake);
  }
  return c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA);
}
"""

_status: str | None = None  # None: not tried yet; "" installed; else why it is not


def install() -> str:
    """Register the fake CUDA guard once per process. Returns "" when a CUDA guard is in
    place (ours, or a CUDA build's own), else the reason it could not be built."""
    global _status
    if _status is None:
        _status = _build_and_register()
    return _status


def _build_and_register() -> str:
    import torch

    if torch.backends.cuda.is_built():
        return ""  # a CUDA build registers its own guard
    missing = [tool for tool in ("c++", "ninja") if shutil.which(tool) is None]
    if missing:
        return (f"building pytest-streamorder's native CUDA device guard needs "
                f"{' and '.join(missing)} on PATH (apt-get install build-essential ninja-build)")
    if torch.version.cuda is not None:
        return ("torch.version.cuda was changed before the native CUDA device guard was "
                "built; build it first (pytest_streamorder.sim.cuda_guard.install())")
    from torch.utils.cpp_extension import load_inline

    directory = _build_directory(torch.__version__)
    try:
        os.makedirs(directory, exist_ok=True)
        module = load_inline(_EXTENSION, cpp_sources=[_SOURCE], functions=["install"],
                             build_directory=directory, verbose=False)
    except Exception as exc:  # a compiler error: report it, never abort
        return f"building pytest-streamorder's native CUDA device guard failed: {exc}"
    if not module.install():
        return "the native CUDA device guard was built but did not register"
    return ""


def _build_directory(torch_version: str) -> str:
    """Where the build is cached: one folder per user, torch version and Python."""
    chosen = os.environ.get("STREAMORDER_BUILD_DIR")
    if chosen:
        return chosen
    tag = f"torch{torch_version}-py{sys.version_info[0]}{sys.version_info[1]}".replace("+", "_")
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return os.path.join(tempfile.gettempdir(), f"pytest-streamorder-{user}", tag, _EXTENSION)
