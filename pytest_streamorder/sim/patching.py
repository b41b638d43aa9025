"""Attribute patches that are undone exactly, in reverse order (what the torch.cuda
stand-in and the API surface modules install while a virtual device is active)."""

from __future__ import annotations

_MISSING = object()


class Patches:
    def __init__(self):
        self._saved: list[tuple[object, str, object]] = []

    def set(self, owner, name: str, value) -> None:
        self._saved.append((owner, name, owner.__dict__.get(name, _MISSING)
                            if isinstance(owner, type) else getattr(owner, name, _MISSING)))
        setattr(owner, name, value)

    def set_everywhere(self, modules, name: str, original, value) -> None:
        """Replace `original` wherever one of `modules` binds it under `name`: torch.cuda
        re-exports its submodules' functions, and both spellings must see the stand-in."""
        for module in modules:
            if getattr(module, name, _MISSING) is original:
                self.set(module, name, value)

    def entries(self) -> list:
        """(owner, name, original) of each patch, in the order made."""
        return list(self._saved)

    def undo(self) -> None:
        while self._saved:
            owner, name, value = self._saved.pop()
            if value is _MISSING:
                try:
                    delattr(owner, name)
                except AttributeError:
                    pass
            else:
                setattr(owner, name, value)
