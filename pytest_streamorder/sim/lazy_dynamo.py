"""torch._dynamo (and torch._inductor) are imported only when something uses them.

Importing torch._dynamo takes 1-3 s, and it copies torch.cuda's functions and types
into tables at import time (a device interface, constant-folding lists, the stream
variable's type). Imported while the virtual device has patched torch.cuda, those tables
would keep the stand-ins after the device is gone. So instead of importing it up front,
the device puts an import hook on sys.meta_path: a module under those packages imported
while the device is attached is executed with torch.cuda's originals back in place,
and the stand-ins are put back right after (`install`, `uninstall`). Callbacks given
to `when_imported` run once torch._dynamo exists (at once if it already does), with the
device's patches in place: code that adjusts dynamo's config for the device goes there.

While such an import runs, another host thread calling torch.cuda sees the originals:
imports hold Python's import lock for that module, and the runtime lock is not taken.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading

from .patching import restore, saved

PACKAGES = ("torch._dynamo", "torch._inductor")


def _wrapped(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in PACKAGES)


class _Loader(importlib.abc.Loader):
    def __init__(self, hook: "DynamoImportHook", loader):
        self.hook, self.loader = hook, loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with self.hook.originals():
            self.loader.exec_module(module)
        if module.__name__ == "torch._dynamo":
            self.hook.imported()


class DynamoImportHook(importlib.abc.MetaPathFinder):
    """`entries()` gives the device's patches as (owner, name, original) in the order
    they were made; the hook undoes them for the import of a wrapped module."""

    def __init__(self, entries):
        self.entries = entries
        self._depth = 0  # nested imports swap once
        self._lock = threading.RLock()

    def find_spec(self, name, path=None, target=None):
        if not _wrapped(name):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(self, spec.loader)
        return spec

    def originals(self):
        return _Originals(self)

    def imported(self) -> None:
        for callback in list(_callbacks):
            callback()


class _Originals:
    """The device's patches undone for the duration, and redone after."""

    def __init__(self, hook: DynamoImportHook):
        self.hook = hook
        self.current: list = []

    def __enter__(self):
        hook = self.hook
        hook._lock.acquire()
        hook._depth += 1
        if hook._depth == 1:
            for owner, name, original in reversed(list(hook.entries())):
                # (an entry whose original is patching's 'absent' is deleted, not set)
                self.current.append((owner, name, saved(owner, name)))
                restore(owner, name, original)
        return self

    def __exit__(self, *exc):
        hook = self.hook
        try:
            for owner, name, value in reversed(self.current):
                restore(owner, name, value)
        finally:
            hook._depth -= 1
            hook._lock.release()


_hook: DynamoImportHook | None = None
_callbacks: list = []


def install(entries) -> None:
    """The device patched torch.cuda (`entries()` lists how): hook dynamo's import,
    unless it is imported already (then its tables hold the originals anyway)."""
    global _hook
    uninstall()
    if "torch._dynamo" not in sys.modules:
        _hook = DynamoImportHook(entries)
        sys.meta_path.insert(0, _hook)


def uninstall() -> None:
    global _hook
    if _hook is not None:
        try:
            sys.meta_path.remove(_hook)
        except ValueError:
            pass
        _hook = None


def when_imported(callback) -> None:
    """Run `callback()` each time torch._dynamo gets imported while a device is attached
    (a device attached after the import finds it in sys.modules and handles it itself)."""
    if callback not in _callbacks:
        _callbacks.append(callback)
