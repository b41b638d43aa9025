"""What a Triton kernel does to its pointer arguments, read from its source; and the two
things a user may tell us about a Triton kernel (for both backends).

- `pointer_kinds(kernel)`: which parameters the kernel loads through and which it stores
  through (atomics do both), by following each pointer parameter through assignments,
  loops, `tl.make_block_ptr`/`tl.advance`, tensor descriptors and calls of other
  `@triton.jit` helpers to the `tl.load`/`tl.store`/`tl.atomic_*` calls it reaches. A
  loaded value is data, not a pointer: `tl.load(x_ptr + tl.load(idx_ptr + i))` reads
  both, and `tl.store(out_ptr + i, v)` writes only `out_ptr`. The real-GPU backend uses
  these argument-level kinds (it cannot see a kernel's addresses); the virtual device
  does not need them (it sees every address the interpreter touches).
- `triton_config(kernel, choice)`: the `@triton.autotune` config the virtual device runs
  (it does not benchmark; the first config by default).
- `when_triton_imported(callback)`: a backend patches Triton's launch entry points once
  triton is imported (now, or right after the import).
- `triton_accesses(kernel, fn)`: what a launch reads and writes, declared by the user
  for the real-GPU backend (the views it really touches, or kinds the source does not
  show); `fn(**arguments)` returns `(reads, writes)`, two lists of tensors.

Torch-free and triton-free at import: the plugin may name these without loading either.
"""

from __future__ import annotations

import ast
import inspect
import textwrap

from ..after_import import after_import, stop_waiting  # noqa: F401  (stop_waiting: the backends)

# By name: triton.language functions, and the same as methods of a pointer tensor or a
# tensor descriptor (`ptrs.store(v)`, `desc.load([0, 0])`); other atomic_* read and write.
LOADS = {"load", "load_tensor_descriptor", "atomic_load", "atomic_poll", "gather"}
STORES = {"store", "store_tensor_descriptor", "atomic_store", "scatter"}
# triton.language calls whose pointer operands we cannot follow (memory through asm).
OPAQUE = {"inline_asm_elementwise"}

CONFIG_ATTR = "_streamorder_config"
ACCESSES_ATTR = "_streamorder_accesses"


class Kinds:
    """The parameters a kernel loads through (`reads`) and stores through (`writes`);
    `unknown` says why the source could not tell (then neither set is to be trusted)."""

    __slots__ = ("reads", "writes", "unknown")

    def __init__(self, reads=frozenset(), writes=frozenset(), unknown: str = ""):
        self.reads = frozenset(reads)
        self.writes = frozenset(writes)
        self.unknown = unknown

    def __repr__(self) -> str:
        if self.unknown:
            return f"Kinds(unknown: {self.unknown})"
        return f"Kinds(reads={sorted(self.reads)}, writes={sorted(self.writes)})"


def base_function(kernel):
    """The Python function under a kernel's wrappers (autotune, heuristics, jit)."""
    seen = 0
    while hasattr(kernel, "fn") and seen < 16:
        kernel = kernel.fn
        seen += 1
    return kernel


def jit_of(kernel):
    """The JITFunction (or InterpretedFunction) under autotune/heuristics wrappers."""
    while hasattr(kernel, "fn") and hasattr(kernel.fn, "fn"):
        kernel = kernel.fn
    return kernel


_KINDS: dict = {}  # python function -> Kinds


def pointer_kinds(kernel) -> Kinds:
    """Which parameters `kernel` (a @triton.jit function, maybe autotuned) loads and
    stores through. Cached per function."""
    fn = base_function(kernel)
    hit = _KINDS.get(fn)
    if hit is None:
        hit = _KINDS[fn] = _Analysis(fn, depth=0).kinds()
    return hit


class _Unknown(Exception):
    pass


class _Analysis:
    def __init__(self, fn, depth: int):
        self.fn = fn
        self.depth = depth
        self.globals = getattr(fn, "__globals__", {})
        closure = inspect.getclosurevars(fn).nonlocals if callable(fn) else {}
        self.scope = {**self.globals, **closure}

    def kinds(self) -> Kinds:
        try:
            tree = _parse(self.fn)
        except _Unknown as exc:
            return Kinds(unknown=str(exc))
        args = tree.args
        self.params = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
        self.taint = {p: frozenset([p]) for p in self.params}
        body = tree.body
        try:
            for _ in range(32):  # to a fixpoint: loops carry pointers around
                before = dict(self.taint)
                for node in _walk(body):
                    self._assign(node)
                if self.taint == before:
                    break
            reads, writes = set(), set()
            for node in _walk(body):
                if isinstance(node, ast.Call):
                    self._memory(node, reads, writes)
        except _Unknown as exc:
            return Kinds(unknown=str(exc))
        return Kinds(reads, writes)

    # --- pointer flow ------------------------------------------------------------

    def _assign(self, node) -> None:
        if isinstance(node, ast.Assign):
            value = self._of(node.value)
            for target in node.targets:
                self._bind(target, value)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and node.value is not None:
            self._bind(node.target, self._of(node.value))
        elif isinstance(node, ast.For):
            self._bind(node.target, self._of(node.iter))
        elif isinstance(node, (ast.With,)):
            for item in node.items:
                if item.optional_vars is not None:
                    self._bind(item.optional_vars, self._of(item.context_expr))
        elif isinstance(node, ast.NamedExpr):
            self._bind(node.target, self._of(node.value))

    def _bind(self, target, value: frozenset) -> None:
        if isinstance(target, ast.Name):
            self.taint[target.id] = self.taint.get(target.id, frozenset()) | value
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self._bind(elt, value)
        elif isinstance(target, ast.Starred):
            self._bind(target.value, value)
        # attributes and subscripts of locals: nothing new to follow

    def _of(self, node) -> frozenset:
        """The pointer parameters an expression's value may point into."""
        if node is None:
            return frozenset()
        if isinstance(node, ast.Name):
            return self.taint.get(node.id, frozenset())
        if isinstance(node, ast.Call):
            kind = self._call_kind(node)
            if kind in ("load", "atomic", "method_load", "method_atomic"):
                return frozenset()  # a loaded value is data, not a pointer
        out = frozenset()
        for child in ast.iter_child_nodes(node):
            out |= self._of(child)
        return out

    # --- memory operations -------------------------------------------------------------

    def _call_kind(self, call: ast.Call) -> str:
        func = call.func
        if isinstance(func, ast.Attribute) and self._of(func.value):
            # a method of a pointer tensor or a tensor descriptor
            kind = _memory_kind(func.attr)
            return "method_" + kind if kind else ""
        target = self._resolve(func)
        if target is None:
            # a method of a local value (x.to(...), acc.reshape(...)): triton tensors'
            # methods that touch memory are only those of pointers, above
            return "" if isinstance(func, ast.Attribute) else "unresolved"
        module = getattr(target, "__module__", "") or ""
        if module.startswith("triton.language"):
            name = getattr(target, "__name__", "")
            return "opaque" if name in OPAQUE else _memory_kind(name)
        if hasattr(target, "fn") and callable(getattr(target, "fn")) \
                and type(target).__module__.startswith("triton"):
            return "helper"
        return ""

    def _memory(self, call: ast.Call, reads: set, writes: set) -> None:
        kind = self._call_kind(call)
        if kind in ("load", "store", "atomic"):
            ptr = call.args[0] if call.args else _keyword(call, ("pointer", "ptr", "desc"))
            hit = self._of(ptr)
            if kind != "store":
                reads |= hit
            if kind != "load":
                writes |= hit
        elif kind.startswith("method_"):
            hit = self._of(call.func.value)
            if kind != "method_store":
                reads |= hit
            if kind != "method_load":
                writes |= hit
        elif kind == "helper":
            self._helper(call, reads, writes)
        elif kind in ("opaque", "unresolved"):
            passed = frozenset()
            for arg in list(call.args) + [k.value for k in call.keywords]:
                passed |= self._of(arg)
            if passed:
                what = ast.unparse(call.func)
                raise _Unknown(f"pointer arguments {sorted(passed)} reach {what}(), whose "
                               f"memory accesses the source does not show")

    def _helper(self, call: ast.Call, reads: set, writes: set) -> None:
        callee = self._resolve(call.func)
        if self.depth >= 8:
            raise _Unknown("@triton.jit helpers nested too deep to follow")
        inner = _Analysis(base_function(callee), self.depth + 1).kinds()
        if inner.unknown:
            raise _Unknown(f"helper {ast.unparse(call.func)}: {inner.unknown}")
        bound: dict = {}
        params = _params(base_function(callee))
        for name, arg in zip(params, call.args):
            bound[name] = self._of(arg)
        for kw in call.keywords:
            if kw.arg is None:
                raise _Unknown(f"**kwargs passed to helper {ast.unparse(call.func)}")
            bound[kw.arg] = self._of(kw.value)
        if any(isinstance(a, ast.Starred) for a in call.args):
            raise _Unknown(f"*args passed to helper {ast.unparse(call.func)}")
        for name in inner.reads:
            reads |= bound.get(name, frozenset())
        for name in inner.writes:
            writes |= bound.get(name, frozenset())

    # --- names ---------------------------------------------------------------------------

    def _resolve(self, node):
        """The object a dotted name in the kernel refers to, or None."""
        if isinstance(node, ast.Name):
            if node.id in self.taint and node.id not in self.scope:
                return None
            return self.scope.get(node.id, getattr(__builtins__, node.id, None)
                                  if not isinstance(__builtins__, dict)
                                  else __builtins__.get(node.id))
        if isinstance(node, ast.Attribute):
            base = self._resolve(node.value)
            return None if base is None else getattr(base, node.attr, None)
        return None



def _memory_kind(name: str) -> str:
    if name in LOADS:
        return "load"
    if name in STORES:
        return "store"
    if name.startswith("atomic_"):
        return "atomic"
    return ""


def _walk(body):
    for stmt in body:
        yield from ast.walk(stmt)


def _keyword(call: ast.Call, names):
    for kw in call.keywords:
        if kw.arg in names:
            return kw.value
    return None


def _params(fn) -> list:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def _parse(fn) -> ast.FunctionDef:
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as exc:
        raise _Unknown(f"its source is not available ({exc})") from None
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            return node
    raise _Unknown("its source holds no function definition")


# --- what a user tells us ---------------------------------------------------------------

def triton_config(kernel, choice) -> None:
    """Run `@triton.autotune` kernel `kernel` with one of its configs on the virtual
    device: `choice` is an index into its configs, or a dict equal to one config's
    kwargs (`{"BLOCK": 128}`). Without this, the first config runs. The real-GPU
    backend lets Triton autotune as usual."""
    configs = getattr(kernel, "configs", None)
    if not isinstance(configs, list):
        raise TypeError(f"triton_config: {kernel!r} is not a @triton.autotune kernel")
    if isinstance(choice, bool) or not isinstance(choice, (int, dict)):
        raise TypeError(f"triton_config: choice must be a config index or a dict of the "
                        f"config's kwargs, not {type(choice).__name__}")
    if isinstance(choice, int):
        if not -len(configs) <= choice < len(configs):
            raise ValueError(f"triton_config: index {choice} out of range for "
                             f"{len(configs)} configs")
        picked = configs[choice]
    else:
        matches = [c for c in configs if getattr(c, "kwargs", None) == choice]
        if len(matches) != 1:
            shown = ", ".join(str(getattr(c, "kwargs", c)) for c in configs)
            raise ValueError(f"triton_config: {len(matches)} of the configs have kwargs "
                             f"{choice} (they are: {shown})")
        picked = matches[0]
    setattr(kernel, CONFIG_ATTR, picked)


def chosen_config(kernel):
    """The config triton_config named for `kernel`, else its first."""
    return getattr(kernel, CONFIG_ATTR, None) or kernel.configs[0]


def triton_accesses(kernel, fn) -> None:
    """Declare what each launch of `kernel` reads and writes on the real-GPU backend:
    `fn(**arguments)` (the launch's arguments by parameter name, autotuned and
    heuristic values included) returns `(reads, writes)`, two lists of CUDA tensors (the
    views the launch really touches). Replaces what the source says for that kernel;
    the virtual device ignores it (it sees each address the kernel touches)."""
    if not callable(fn):
        raise TypeError("triton_accesses: fn must be callable as fn(**arguments) -> (reads, writes)")
    setattr(jit_of(kernel), ACCESSES_ATTR, fn)


def declared_accesses(kernel):
    """The declaration triton_accesses made for `kernel`, or None."""
    return getattr(jit_of(kernel), ACCESSES_ATTR, None)


# --- patching triton once it is imported -------------------------------------------------

def when_triton_imported(callback):
    """Call `callback()` now if triton is imported, else right after `import triton`
    completes. Returns the import hook still waiting (for stop_waiting), or None."""
    return after_import("triton", callback)
