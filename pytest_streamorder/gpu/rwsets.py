"""Read and write sets of aten ops, from their schemas, and byte ranges of tensors.

An op reads every tensor argument and writes those its schema marks `Tensor(a!)`; every
output that does not alias an argument is fresh memory the op writes. An op whose
outputs all alias arguments and which writes nothing is a view (no device work). A
tensor touches the bytes [offset, offset + extent) of its storage, so views and offsets
count, and a zero-size tensor touches nothing.

Needs torch only for schemas; CPU-testable.
"""

from __future__ import annotations

import re

import torch

aten = torch.ops.aten

# Ops that only allocate: their outputs are uninitialised memory, no kernel runs.
EMPTY_OPS = frozenset({
    aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
    aten.new_empty.default, aten.new_empty_strided.default,
})

# Ops that make the host wait for the current stream on CUDA (data-dependent output
# shape, or a value returned to Python). The GPU trace reports the sync too; this list
# is the fallback, and it never makes the model believe a sync that did not happen.
SYNCING_OPS = frozenset(
    op for op in (
        getattr(aten, "_local_scalar_dense", None) and aten._local_scalar_dense.default,
        aten.nonzero.default, aten.masked_select.default, aten.is_nonzero.default,
        aten.equal.default, aten._unique2.default, aten.unique_consecutive.default,
        aten.unique_dim.default,
    ) if op)

# Ops that copy between host and device (a CPU argument is not an error for them).
COPY_OPS = frozenset({aten.copy_.default, aten._to_copy.default})

# Ops that reach the dispatcher but touch no data.
_METADATA_PREFIXES = ("is_", "sym_", "_nested", "size", "stride", "numel", "dim",
                      "_has_", "_version", "output_nr", "_is_")


_LIST_ALIAS = re.compile(r"Tensor\((\w+)\)\[\]")


class OpPlan:
    """What one op's schema says about its tensors."""

    __slots__ = ("name", "args", "returns_alias", "is_view", "is_empty", "metadata",
                 "returns_tensors", "syncs", "is_copy", "written")

    def __init__(self, func):
        schema = func._schema
        short = schema.name.split("::")[-1]
        self.name = f"aten.{short}" + (f".{schema.overload_name}" if schema.overload_name else "")
        # (position, name, is_write, is_list) per tensor-typed argument
        self.args: list[tuple[int, str, bool, bool]] = []
        alias_of: dict = {}
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
        self.returns_alias: list[str | None] = []
        for r in schema.returns:
            name = None
            if r.alias_info is not None:
                sets = r.alias_info.before_set
                if not sets:  # `Tensor(a)[]` (split, unbind): the set is on the elements
                    sets = set(_LIST_ALIAS.findall(str(schema).split("->", 1)[-1]))
                for s in sets:
                    name = alias_of.get(s, name)
            self.returns_alias.append(name)
        self.written = written = any(w for _, _, w, _ in self.args)
        self.is_view = bool(schema.returns) and not written and all(
            a is not None for a in self.returns_alias)
        self.is_empty = func in EMPTY_OPS
        self.returns_tensors = bool(schema.returns) and all(
            "Tensor" in str(r.type) for r in schema.returns)
        self.metadata = (not self.returns_tensors and not written
                         and func not in SYNCING_OPS and short.startswith(_METADATA_PREFIXES))
        # A value returned to Python (item, equal, ...) needs the data on the host.
        self.syncs = func in SYNCING_OPS or (
            not self.returns_tensors and not self.metadata and bool(schema.returns))
        self.is_copy = func in COPY_OPS

    def tensor_args(self, args, kwargs):
        """(tensor, is_write) for every tensor argument given."""
        out = []
        n = len(args)
        for pos, name, write, is_list in self.args:
            v = args[pos] if pos < n else kwargs.get(name)
            if v is None:
                continue
            if is_list:
                for t in v:
                    if isinstance(t, torch.Tensor):
                        out.append((t, write))
            elif isinstance(v, torch.Tensor):
                out.append((v, write))
        return out

    def __repr__(self) -> str:
        return f"<OpPlan {self.name}>"


_PLANS: dict = {}


def plan_of(func) -> OpPlan:
    plan = _PLANS.get(func)
    if plan is None:
        plan = _PLANS[func] = OpPlan(func)
    return plan


def byte_range(t: torch.Tensor) -> tuple[int, int]:
    """The bytes of its storage a tensor can touch: [start, stop) (empty when numel is 0)."""
    isz = t.element_size()
    start = t.storage_offset() * isz
    if t.is_contiguous():
        return start, start + t.numel() * isz
    span = 1
    for n, s in zip(t.size(), t.stride()):
        if n == 0:
            return start, start
        span += (n - 1) * abs(s)
    return start, start + span * isz


def storage_base(t: torch.Tensor) -> int:
    """Address of the tensor's storage (what the allocator handed out)."""
    return t.data_ptr() - t.storage_offset() * t.element_size()
