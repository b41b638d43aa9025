"""Attribute patches that are undone exactly, in reverse order (what the torch.cuda
stand-in and the API surface modules install while a virtual device is active)."""

from __future__ import annotations

from types import ModuleType

_MISSING = object()


def _bound(module, name: str):
    """getattr(module, name, _MISSING), without raising (and catching) an AttributeError
    for each name a module lacks: a plain module's attribute is its __dict__ entry, unless
    it has a module __getattr__ (PEP 562)."""
    if type(module) is ModuleType:
        namespace = module.__dict__
        value = namespace.get(name, _MISSING)
        if value is not _MISSING or "__getattr__" not in namespace:
            return value
    return getattr(module, name, _MISSING)


def saved(owner, name: str):
    """The attribute as a patch keeps it to undo: a class's own entry (not an inherited
    one), a module's or object's value; _MISSING where there is none."""
    if isinstance(owner, type):
        return owner.__dict__.get(name, _MISSING)
    return getattr(owner, name, _MISSING)


def restore(owner, name: str, value) -> None:
    """Put back what `saved` returned: an attribute that was absent is deleted again."""
    if value is _MISSING:
        try:
            delattr(owner, name)
        except AttributeError:
            pass
    else:
        setattr(owner, name, value)


class Patches:
    def __init__(self):
        self._saved: list[tuple[object, str, object]] = []

    def set(self, owner, name: str, value) -> None:
        self._saved.append((owner, name, saved(owner, name)))
        setattr(owner, name, value)

    def set_everywhere(self, modules, name: str, original, value) -> None:
        """Replace `original` wherever one of `modules` binds it under `name`: torch.cuda
        re-exports its submodules' functions, and both spellings must see the stand-in."""
        for module in modules:
            if _bound(module, name) is original:
                self.set(module, name, value)

    def entries(self) -> list:
        """(owner, name, original) of each patch, in the order made."""
        return list(self._saved)

    def undo(self) -> None:
        while self._saved:
            restore(*self._saved.pop())
