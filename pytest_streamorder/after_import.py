"""Run a callback right after a module's first import completes (at once, if it is
imported already): for patches that must wait for torch (the session runtime, early.py)
or for triton (its launcher, ops/triton_access.py) without importing either.

Torch-free; imports only the standard library.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys


def after_import(name: str, callback):
    """Call `callback()` now if module `name` is imported, else right after its first
    import completes. Returns the import hook still waiting (for stop_waiting), or None."""
    if name in sys.modules:
        callback()
        return None
    hook = _AfterImport(name, callback)
    sys.meta_path.insert(0, hook)
    return hook


def stop_waiting(hook) -> None:
    """Withdraw a hook after_import returned, if it is still waiting."""
    if hook is not None and hook in sys.meta_path:
        sys.meta_path.remove(hook)


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, callback):
        self.name, self.callback = name, callback

    def find_spec(self, name, path, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)  # once: the module's own imports go the usual way
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            exec_module, callback = spec.loader.exec_module, self.callback

            def exec_then_call(module):
                exec_module(module)
                callback()

            spec.loader.exec_module = exec_then_call
        return spec
