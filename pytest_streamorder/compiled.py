"""torch.compile under either backend: compiled functions run eagerly.

On the virtual device Dynamo cannot trace device tensors (wrapper subclasses with our
dispatch); on a real GPU Inductor's Triton kernels launch outside the dispatcher, where
the backend's dispatch mode never sees them. With `torch._dynamo.config.disable` set, every
compiled function (decorated before or after the device was attached) calls its Python
original, so each op it does is device work the model sees, on the current stream.
`torch.compiler.is_compiling()` is therefore False inside them, as in eager mode.

Dynamo is heavy to import, so it is not imported here: if it is already imported the
flag is set now; otherwise `torch.compile` is wrapped and sets it on its first call
(which is what imports Dynamo). Both are undone when the device is detached.
"""

from __future__ import annotations

import functools
import sys

import torch


class _Switch:
    """Dynamo's `disable` flag while the device is attached, and the original back."""

    def __init__(self):
        self.saved = None  # (config module, its value before) once set

    def set(self) -> None:
        if self.saved is None and "torch._dynamo" in sys.modules:
            config = sys.modules["torch._dynamo"].config
            self.saved = (config, config.disable)
            config.disable = True

    def restore(self) -> None:
        if self.saved is not None:
            config, value = self.saved
            config.disable = value
            self.saved = None


def install():
    """Make compiled functions eager; returns the function that undoes it."""
    switch = _Switch()
    switch.set()
    original = torch.compile
    if switch.saved is None:  # Dynamo comes with the first torch.compile call
        @functools.wraps(original)
        def compile_eagerly(*args, **kwargs):
            try:
                return original(*args, **kwargs)
            finally:
                switch.set()

        torch.compile = compile_eagerly

    def undo() -> None:
        if torch.compile is not original:
            torch.compile = original
        switch.restore()

    return undo
