"""Triton kernels for tests/unit/test_triton.py (not a test module). Imported with
TRITON_INTERPRET=1 they run in Triton's CPU interpreter, as under pytest --streamorder."""

import triton
import triton.language as tl


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, x + y, mask=mask)


@triton.jit
def fill_kernel(out_ptr, start, n, value, BLOCK: tl.constexpr):
    """out[start:start + n] = value, masked: lanes past the end touch nothing."""
    offs = start + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < start + n
    tl.store(out_ptr + offs, tl.zeros((BLOCK,), tl.float32) + value, mask=mask)


@triton.jit
def sum_kernel(x_ptr, start, n, out_ptr, BLOCK: tl.constexpr):
    """out[0] = x[start:start + n].sum() (n <= BLOCK)."""
    offs = start + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < start + n, other=0.0)
    tl.store(out_ptr, tl.sum(x, axis=0))


@triton.jit
def _store_rows(out_ptr, offs, values):
    tl.store(out_ptr + offs, values)


@triton.jit
def gather_kernel(src_ptr, idx_ptr, out_ptr, BLOCK: tl.constexpr):
    """out[i] = src[idx[i]]: the elements of src it reads depend on idx's values."""
    offs = tl.arange(0, BLOCK)
    idx = tl.load(idx_ptr + offs)
    _store_rows(out_ptr, offs, tl.load(src_ptr + idx))


@triton.jit
def count_kernel(count_ptr, x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0)
    tl.atomic_add(count_ptr, tl.sum(x, axis=0))


@triton.autotune(configs=[triton.Config({"BLOCK": 4}), triton.Config({"BLOCK": 8}),
                          triton.Config({"BLOCK": 16})], key=[])
@triton.jit
def block_size_kernel(out_ptr, BLOCK: tl.constexpr):
    """out[0] = the BLOCK it was launched with."""
    tl.store(out_ptr, BLOCK)


@triton.jit
def asm_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    y = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=tl.int32,
                                  is_pure=True, pack=1)
    tl.store(out_ptr + offs, y)


@triton.jit
def unmasked_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    """No mask: with BLOCK past the end of x it reads outside x's memory."""
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs))
