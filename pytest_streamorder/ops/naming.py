"""Names for reports, read from the user's source line: a stream or event is named by
the variable it is assigned to where it is created, a tensor by the variable its
allocating line assigns."""

from __future__ import annotations

import linecache
import re

from ..model import Site
from .frames import user_frames

_ASSIGNED_NAMES = re.compile(
    r"^\s*((?:self\.)?\w+(?:\s*,\s*(?:self\.)?\w+)*)\s*(?::[^=]*)?=(?!=)")
_created_at: dict = {}  # (file, line) -> how many objects that line created so far


def assigned_names(filename: str, line: int) -> list[str]:
    """The variables assigned on that line (`self.` dropped), also when the line
    continues an assignment from up to two lines above; [] if none."""
    for back in range(3):
        text = linecache.getline(filename, line - back)
        m = _ASSIGNED_NAMES.match(text)
        if m:
            return [n.strip().removeprefix("self.") for n in m.group(1).split(",")]
        if back == 0 and ")" in text.split("(")[0]:
            break
    return []


def name_from_source(site: Site, fallback: str) -> str:
    """The variable a stream/event is assigned to on its creation line (the innermost
    user frame), e.g. `self.fwd_d2h_stream = torch.cuda.Stream()` -> 'fwd_d2h_stream';
    `fwd, d2h = torch.cuda.Stream(), torch.cuda.Stream()` -> 'fwd', then 'd2h'."""
    for code, line in (user_frames(site) or site.frames)[:1]:
        names = assigned_names(code.co_filename, line)
        if names:
            key = (code.co_filename, line)
            nth = _created_at.get(key, 0)
            _created_at[key] = nth + 1
            name = names[nth % len(names)]
            return name if name != "_" else fallback
    return fallback


class TensorLabel:
    """An allocation's name in reports, worked out only when a report prints it:
    "'var' (f32[4])", "a pinned tensor (...)", "output of aten.add.Tensor (...)"."""

    __slots__ = ("op", "dtype", "size", "site", "_text")

    def __init__(self, op: str, dtype, size, site: Site):
        self.op, self.dtype, self.size, self.site, self._text = op, dtype, size, site, None

    def __str__(self) -> str:
        if self._text is None:
            what = f"{str(self.dtype).replace('torch.', '')}{list(self.size)}"
            var = ""
            for code, line in user_frames(self.site)[:1]:
                names = assigned_names(code.co_filename, line)
                if len(names) == 1 and names[0] != "_":  # `a, b = ...`: which one is unknown
                    var = names[0]
            origin = (f"'{var}'" if var else "a pinned tensor" if self.op == "pinned"
                      else f"output of {self.op}" if self.op else "a tensor")
            self._text = f"{origin} ({what})"
        return self._text

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)
