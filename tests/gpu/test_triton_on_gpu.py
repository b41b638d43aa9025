"""Triton launches on the real-GPU backend (issue 14): the dispatch mode never sees them,
so JITFunction.run tells the detector what each launch reads and writes (argument-level
sets from the kernel's source, or the user's declaration). The kernels and programs are
those of tests/unit/test_triton.py. Skipped without CUDA or triton.

Written without a GPU at hand: the lead runs it on the H200 after merging, alone
(`python -m pytest tests/gpu/test_triton_on_gpu.py -p no:randomly`): in a process that
imported triton with TRITON_INTERPRET=1 (tests/unit/test_triton.py) it skips."""

from __future__ import annotations

import os
import textwrap

import pytest
import torch

pytestmark = [pytest.mark.gpu]
if not torch.cuda.is_available():  # before importing triton: the CPU suite imports it interpreted
    pytest.skip("needs a real CUDA device", allow_module_level=True)

triton = pytest.importorskip("triton", reason="needs the [triton] extra: pip install -e '.[triton]'")
if os.environ.get("TRITON_INTERPRET") or \
        type(triton.language.standard.sum).__name__ == "InterpretedFunction":
    pytest.skip("triton was imported in interpreter mode in this process", allow_module_level=True)

from pytest_streamorder.errors import NotModelledError  # noqa: E402
from pytest_streamorder.ops.triton_access import triton_accesses  # noqa: E402
from tests.unit import triton_kernels as k  # noqa: E402

pytest_plugins = ["pytester"]


def _run(program, delays=False, **kw):
    from pytest_streamorder.gpu import cuda_backend

    delay = dict(delay_probability=1.0, fire_probability=1.0, delay_ms=0.3) if delays else \
        dict(delay_probability=0)
    with cuda_backend(seed=0, raise_on_race=False, **delay) as be:
        result = program(**kw)
    return be, result


def side_streams(n: int):
    streams = [torch.cuda.Stream() for _ in range(n)]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    return streams


def write_then_read(wait: bool):
    buf = torch.zeros(16, device="cuda")
    total = torch.zeros(1, device="cuda")
    producer, consumer = side_streams(2)
    with torch.cuda.stream(producer):
        k.fill_kernel[(2,)](buf, 0, 16, 1.0, BLOCK=8)
        done = torch.cuda.Event()
        done.record()
    with torch.cuda.stream(consumer):
        if wait:
            done.wait()
        k.sum_kernel[(1,)](buf, 0, 16, total, BLOCK=16)
    torch.cuda.synchronize()
    return total.item()


def test_a_kernel_reading_what_another_streams_kernel_writes_without_a_wait_is_a_race():
    be, _ = _run(write_then_read, wait=False)
    assert len(be.races) == 1, "\n\n".join(str(r) for r in be.races)
    race = be.races[0]
    assert (race.earlier.op, race.later.op) == ("Triton kernel fill_kernel", "Triton kernel sum_kernel")
    assert (race.earlier.is_write, race.later.is_write) == (True, False)


@pytest.mark.parametrize("delays", [False, True])
def test_the_correct_twin_is_silent_and_right(delays):
    be, total = _run(write_then_read, delays=delays, wait=True)
    assert be.races == [], "\n\n".join(str(r) for r in be.races)
    assert total == 16.0


def test_values_equal_the_torch_reference():
    def program():
        x, y = torch.randn(37, device="cuda"), torch.randn(37, device="cuda")
        out = torch.empty(37, device="cuda")
        k.add_kernel[(triton.cdiv(37, 8),)](x, y, out, 37, BLOCK=8)
        src = torch.randn(16, device="cuda")
        idx = torch.randperm(16, device="cuda")[:8]
        gathered = torch.empty(8, device="cuda")
        k.gather_kernel[(1,)](src, idx, gathered, BLOCK=8)
        block = torch.zeros(1, dtype=torch.int32, device="cuda")
        k.block_size_kernel[(1,)](block)  # autotuned for real on a GPU
        torch.cuda.synchronize()
        return (torch.equal(out, x + y), torch.equal(gathered, src[idx]), block.item())

    be, (added, gathered, block) = _run(program)
    assert be.races == [], "\n\n".join(str(r) for r in be.races)
    assert added and gathered and block in (4, 8, 16)


def _halves(views: bool, declared: bool = False):
    buf = torch.zeros(16, device="cuda")
    a, b = side_streams(2)
    for stream, start, value in ((a, 0, 1.0), (b, 8, 2.0)):
        with torch.cuda.stream(stream):
            if views:  # each launch is handed the half it writes
                k.fill_kernel[(1,)](buf[start:start + 8], 0, 8, value, BLOCK=8)
            else:  # the whole buffer and an offset
                k.fill_kernel[(1,)](buf, start, 8, value, BLOCK=8)
    torch.cuda.synchronize()
    return buf.cpu().tolist()


def test_kernels_handed_disjoint_views_from_two_streams_are_silent():
    be, values = _run(_halves, views=True)
    assert be.races == [], "\n\n".join(str(r) for r in be.races)
    assert values == [1.0] * 8 + [2.0] * 8


def test_a_whole_buffer_with_offsets_counts_whole_unless_declared():
    """Where argument-level sets cannot avoid a false alarm: the GPU's addresses are not
    seen. A declaration of the part each launch touches removes it."""
    be, _ = _run(_halves, views=False)
    assert len(be.races) == 1  # documented: declare such a kernel's accesses
    triton_accesses(k.fill_kernel, lambda out_ptr, start, n, **_: ([], [out_ptr[start:start + n]]))
    try:
        be, values = _run(_halves, views=False)
    finally:
        del k.fill_kernel._streamorder_accesses
    assert be.races == [], "\n\n".join(str(r) for r in be.races)
    assert values == [1.0] * 8 + [2.0] * 8


def test_a_kernel_whose_source_hides_its_accesses_is_refused_by_name():
    @triton.jit
    def hidden(x_ptr):
        unknown_call(x_ptr)  # noqa: F821

    def program():
        hidden[(1,)](torch.zeros(1, device="cuda"))

    with pytest.raises(NotModelledError, match="'hidden' on the real-GPU backend.*triton_accesses"):
        _run(program)


def test_under_streamorder_a_missing_wait_fails_with_a_report_naming_the_kernel(pytester):
    pytester.makepyfile(kernels=textwrap.dedent('''
        import triton
        import triton.language as tl

        @triton.jit
        def produce(out_ptr, n, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            tl.store(out_ptr + offs, offs.to(tl.float32), mask=offs < n)
    '''), test_triton_streams=textwrap.dedent('''
        import torch
        from kernels import produce

        def run(wait):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            buf = torch.empty(8, device="cuda")
            ready = torch.cuda.Event()
            with torch.cuda.stream(side):
                produce[(1,)](buf, 8, BLOCK=8)
                ready.record()
            if wait:
                torch.cuda.current_stream().wait_event(ready)
            return buf.sum().item()

        def test_compiled():
            assert type(produce).__name__ == "JITFunction"

        def test_correct():
            assert run(wait=True) == 28.0

        def test_broken():
            run(wait=False)
    '''))
    pytester.syspathinsert()
    result = pytester.runpytest("--streamorder", "-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*earlier: write by stream * in Triton kernel produce*"])
