"""What the plugin does before the first conftest.py is imported: read whether
--streamorder is on (flag, environment, ini) and, on the virtual device, install the
session's virtual CUDA runtime (sim/session.py), so that import-time checks in conftest.py
and test modules see a CUDA GPU, and set TRITON_INTERPRET=1, so that Triton kernels
defined from then on can run on it (sim/triton.py).

Imports no torch unless --streamorder is on. Under --collect-only the runtime is
installed when something first imports torch (collection must see the virtual GPU, and
a collection that imports no torch must not import it).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings

import pytest

from .after_import import after_import
from .settings import Settings

# The session runtime of a config (each pytester run in-process has its own config).
SESSION_KEY = pytest.StashKey[object]()
EARLY = ("streamorder", "replay", "backend", "capability", "max_ops")


@contextlib.contextmanager
def numpy_warning_ignored():
    """torch's CPU wheel warns "Failed to initialize NumPy" when imported without NumPy,
    which it does not need; under `-W error` that warning would become an exception.
    Only this message is ignored, and only while we import."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
        yield


def quiet_import(name: str):
    """A module that may import torch, imported with its NumPy warning ignored."""
    if name in sys.modules:
        return sys.modules[name]
    with numpy_warning_ignored():
        return importlib.import_module(name)


class _EarlyConfig:
    """The config as settings.read needs it, before the command line is fully parsed."""

    def __init__(self, config):
        self._config = config

    def getoption(self, dest, default=None):
        return getattr(self._config.known_args_namespace, dest, default)

    def __getattr__(self, name):
        return getattr(self._config, name)


def load_initial_conftests(early_config) -> None:
    settings = Settings.from_config(_EarlyConfig(early_config), EARLY)
    if not settings.streamorder and settings.replay is None:
        return
    if _replay_backend(settings) == "cuda" or settings.backend == "cuda":
        return  # the real GPU: nothing virtual (the cuda backend checks for a GPU later)
    if getattr(early_config.known_args_namespace, "collectonly", False):
        _after_torch_import(lambda: _install(early_config, settings))
    else:
        _install(early_config, settings)


def _replay_backend(settings) -> str | None:
    if settings.replay is None:
        return None
    from .scheduling import ReplayTokenError, parse_replay

    try:
        return parse_replay(settings.replay).backend
    except ReplayTokenError:
        return None  # pytest_configure reports the bad token


def _install(config, settings) -> None:
    torch = quiet_import("torch")
    if settings.backend == "auto" and torch.cuda.is_available():
        return  # a real GPU: the cuda backend
    session = quiet_import("pytest_streamorder.sim.session")
    runtime = session.SessionRuntime(settings.capability, max_ops=settings.max_ops).install()
    config.stash[SESSION_KEY] = runtime
    config.add_cleanup(runtime.uninstall)
    _interpret_triton(config)


def _interpret_triton(config) -> None:
    """Triton kernels run on the virtual device in Triton's CPU interpreter
    (sim/triton.py), which `@triton.jit` picks only if TRITON_INTERPRET=1 when the kernel
    is decorated: set it before any conftest.py defines one; put it back at the end."""
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"

    def restore() -> None:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous

    config.add_cleanup(restore)


def session_runtime(config):
    """The session's virtual CUDA runtime, or None (no --streamorder, a GPU, not yet)."""
    return config.stash.get(SESSION_KEY, None)


def _after_torch_import(callback) -> None:
    """Call `callback()` right after the first `import torch` completes (now, if torch
    was imported already)."""
    after_import("torch", callback)
