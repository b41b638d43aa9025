"""Names for reports, read from the user's source line: a stream or event is named by
the variable it is assigned to where it is created, a tensor by the variable its
allocating line assigns."""

from __future__ import annotations

import ast
import linecache

from ..model import Site
from .frames import user_frames

_created_at: dict = {}  # (file, first line) -> how many objects that statement created so far
_ASSIGNMENTS: dict = {}  # file -> (its source, [(first line, last line, names)])


def assigned_names(filename: str, line: int) -> list[str]:
    """The variables assigned by the statement that spans `line` (`self.` dropped; a
    tuple target gives one name per element); [] if that statement assigns nothing.
    Read from the file's syntax tree, so a call spread over several lines is named by
    its assignment, never by a keyword argument on a continuation line."""
    return _statement(filename, line)[1]


def _statement(filename: str, line: int) -> tuple:
    """(first line, names) of the assignment spanning `line`, or (line, [])."""
    for first, last, names in _assignments(filename):
        if first <= line <= last:
            return first, names
    return line, []


def _assignments(filename: str) -> list:
    source = "".join(linecache.getlines(filename))
    hit = _ASSIGNMENTS.get(filename)
    if hit is not None and hit[0] == source:
        return hit[1]
    found = []
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        tree = None
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.Assign):
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target = node.target
        else:
            continue
        elts = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
        names = [_target_name(e) for e in elts]
        found.append((node.lineno, node.end_lineno or node.lineno, names))
    _ASSIGNMENTS[filename] = (source, found)
    return found


def _target_name(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):  # self.stream, self.bufs.pinned
        return node.attr
    return "_"  # a subscript or starred target: no name


def name_from_source(site: Site, fallback: str) -> str:
    """The variable a stream/event is assigned to on its creation line (the innermost
    user frame), e.g. `self.fwd_d2h_stream = torch.cuda.Stream()` -> 'fwd_d2h_stream';
    `fwd, d2h = torch.cuda.Stream(), torch.cuda.Stream()` -> 'fwd', then 'd2h'."""
    for code, line in (user_frames(site) or site.frames)[:1]:
        first, names = _statement(code.co_filename, line)
        if names:
            key = (code.co_filename, first)  # one count per statement, over all its lines
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
