"""What an aten op does to its tensors, read from its schema.

An op reads every tensor argument (lists included) and writes those its schema marks
`Tensor(a!)` (in-place self, out=). An output that aliases an argument (`Tensor(a)`,
or `Tensor(a)[]` for split/unbind: every element aliases) is a view of it; any other
output is fresh memory the op writes. An op whose outputs all alias arguments and that
writes nothing is a view: no device work at all, unless it is a composite that may
copy (`may_copy`) and its output turns out not to share its input's memory.
"""

from __future__ import annotations

import re

import torch

from .catalog import (COPY_OPS, DATA_DEPENDENT_SHAPE, EMPTY_OPS, MASK_INDEXED,
                      METADATA_PREFIXES, RETURNS_DEVICE_VALUE, SIZED_BY_DATA_UNLESS_GIVEN)

# torch's AliasInfo of a `Tensor(a)[]` return has an empty set (it sits on the
# elements); the schema text has it.
_LIST_ALIAS = re.compile(r"Tensor\((\w+)\)\[\]")
_MASK_DTYPES = (torch.bool, torch.uint8)


class OpInfo:
    """The memory behaviour of one aten op (one per op, cached by `op_info`)."""

    __slots__ = ("func", "name", "arg_names", "args", "written", "writes", "returns_alias",
                 "n_returns", "returns_list", "returns_tensors", "is_view", "may_copy",
                 "is_empty", "is_copy", "metadata", "syncs", "may_sync", "seeded")

    def __init__(self, func):
        schema = func._schema
        ns, short = schema.name.split("::")
        self.func = func
        self.name = f"{ns}.{short}" + (f".{schema.overload_name}" if schema.overload_name else "")
        self.arg_names = [a.name for a in schema.arguments]
        # (position, name, is_write, is_list) per tensor-typed argument
        self.args: list[tuple[int, str, bool, bool]] = []
        alias_of: dict = {}  # alias set -> the argument that owns it
        for i, a in enumerate(schema.arguments):
            text = str(a.type)
            if "Tensor" not in text:
                continue
            is_list = text.startswith("List") or text.endswith("[]")
            write = a.alias_info is not None and a.alias_info.is_write
            self.args.append((i, a.name, write, is_list))
            if a.alias_info is not None:
                for s in a.alias_info.before_set:
                    alias_of.setdefault(s, a.name)
        self.written = frozenset(name for _, name, w, _ in self.args if w)
        self.writes = bool(self.written)
        self.returns_alias: list[str | None] = []  # per return: the argument it aliases
        for r in schema.returns:
            name = None
            if r.alias_info is not None:
                sets = r.alias_info.before_set or set(
                    _LIST_ALIAS.findall(str(schema).split("->", 1)[-1]))
                for s in sets:
                    name = alias_of.get(s, name)
            self.returns_alias.append(name)
        self.n_returns = len(schema.returns)
        self.returns_list = self.n_returns == 1 and str(schema.returns[0].type) in (
            "List[Tensor]", "Tensor[]")
        self.returns_tensors = bool(schema.returns) and all(
            "Tensor" in str(r.type) for r in schema.returns)
        self.is_view = bool(schema.returns) and not self.writes and all(
            a is not None for a in self.returns_alias)
        # A composite "view" (to, contiguous, reshape, flatten, ...) returns its input's
        # memory when it can and a fresh copy when it cannot: which one, only the output
        # tells. (They reach a dispatch mode when torch does not decompose them first,
        # e.g. `.cpu()` of an inference tensor.)
        self.may_copy = self.is_view and torch._C._dispatch_has_kernel_for_dispatch_key(
            func.name(), "CompositeImplicitAutograd")
        self.is_empty = func in EMPTY_OPS
        self.is_copy = func in COPY_OPS
        self.metadata = (not self.returns_tensors and not self.writes
                         and func not in RETURNS_DEVICE_VALUE and short.startswith(METADATA_PREFIXES))
        # Always makes the host wait for the current stream: a value returned to Python,
        # or an output shape that depends on device data.
        self.syncs = func in RETURNS_DEVICE_VALUE or func in DATA_DEPENDENT_SHAPE or (
            not self.returns_tensors and not self.metadata and bool(schema.returns))
        # May need the data to know its output (torch's tags say so; for the simulator,
        # whose meta kernels cannot run such an op ahead).
        self.may_sync = self.syncs or func in MASK_INDEXED or func in SIZED_BY_DATA_UNLESS_GIVEN \
            or torch.Tag.dynamic_output_shape in func.tags \
            or torch.Tag.data_dependent_output in func.tags
        self.seeded = torch.Tag.nondeterministic_seeded in func.tags

    def operands(self, args, kwargs) -> list[tuple[str, torch.Tensor, bool]]:
        """(argument name, tensor, is_write) for every tensor argument given."""
        out = []
        n = len(args)
        for pos, name, write, is_list in self.args:
            v = args[pos] if pos < n else kwargs.get(name)
            if v is None:
                continue
            if is_list:
                for t in v:
                    if isinstance(t, torch.Tensor):
                        out.append((name, t, write))
            elif isinstance(v, torch.Tensor):
                out.append((name, v, write))
        return out

    def tensor_args(self, args, kwargs) -> list[tuple[torch.Tensor, bool]]:
        """(tensor, is_write) for every tensor argument given."""
        return [(t, w) for _, t, w in self.operands(args, kwargs)]

    def syncs_with(self, args, kwargs) -> bool:
        """Whether this call makes the host wait for the current stream on CUDA."""
        if self.syncs:
            return True
        if self.func in MASK_INDEXED:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            return any(isinstance(i, torch.Tensor) and i.dtype in _MASK_DTYPES for i in indices)
        if self.func in SIZED_BY_DATA_UNLESS_GIVEN:
            return kwargs.get("output_size") is None
        return False

    def output_alias(self, i: int) -> str | None:
        """The argument the i-th output aliases (every element of a returned list)."""
        aliases = self.returns_alias
        return aliases[i] if i < len(aliases) else aliases[-1] if aliases else None

    def __repr__(self) -> str:
        return f"<OpInfo {self.name}>"


_INFOS: dict = {}


def op_info(func) -> OpInfo:
    info = _INFOS.get(func)
    if info is None:
        info = _INFOS[func] = OpInfo(func)
    return info
