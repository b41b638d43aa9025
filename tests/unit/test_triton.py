"""Triton kernels on the virtual device (issue 14): a launch is a deferred op on its
stream, run by Triton's CPU interpreter on the device buffers, with read and write sets
from the addresses its loads and stores really touch; and the argument-level kinds the
real-GPU backend takes from a kernel's source.

Needs the `triton` extra (`pip install -e ".[triton]"`: triton and numpy)."""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numpy", reason="Triton's interpreter needs numpy: the [triton] extra")

# Imported once here (in-process pytester runs cannot re-import triton's C extension),
# with TRITON_INTERPRET=1 as under pytest --streamorder: Triton's own @triton.jit library
# functions (tl.sum, ...) are decorated at its import and must be interpreted ones too,
# and triton reads the variable again later (it must stay set while these tests run).
_PREVIOUS = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    triton = pytest.importorskip("triton", reason="needs the [triton] extra: pip install -e '.[triton]'")
    import triton.runtime.interpreter  # noqa: E402,F401
    import triton.language as tl  # noqa: E402
finally:
    _restore = (lambda: os.environ.pop("TRITON_INTERPRET", None)) if _PREVIOUS is None else \
        (lambda: os.environ.__setitem__("TRITON_INTERPRET", _PREVIOUS))
    _restore()


if type(triton.language.standard.sum).__name__ != "InterpretedFunction":
    pytest.skip("triton was imported earlier in this process without TRITON_INTERPRET=1 "
                "(tests/gpu on a GPU machine): run these tests in a process of their own",
                allow_module_level=True)


@pytest.fixture(autouse=True, scope="module")
def interpreted():
    os.environ["TRITON_INTERPRET"] = "1"
    yield
    _restore()

import pytest_streamorder as so  # noqa: E402
from pytest_streamorder.errors import NotModelledError, StreamRaceError  # noqa: E402
from pytest_streamorder.ops.triton_access import pointer_kinds, triton_config  # noqa: E402
from pytest_streamorder.scheduling import POLICIES  # noqa: E402
from pytest_streamorder.sim.triton import IllegalAddress  # noqa: E402

pytest_plugins = ["pytester"]

F32 = 4
KERNELS_FILE = Path(__file__).with_name("triton_kernels.py")


@pytest.fixture(scope="module")
def k(interpreted):
    """tests/unit/triton_kernels.py, imported with TRITON_INTERPRET=1 (as under pytest
    --streamorder) under a name of its own, so its kernels are interpreted ones."""
    spec = importlib.util.spec_from_file_location("interpreted_triton_kernels", KERNELS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def side_streams(n: int):
    """n fresh streams ordered after the default stream's work so far."""
    streams = [torch.cuda.Stream() for _ in range(n)]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    return streams


# --- values ------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", POLICIES)
def test_values_equal_the_torch_reference(k, policy):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(37, generator=gen), torch.randn(37, generator=gen)
    src = torch.randn(16, generator=gen)
    idx = torch.randperm(16, generator=gen)[:8]
    with so.virtual_device(seed=1, policy=policy):
        dx, dy, out = x.cuda(), y.cuda(), torch.empty(37, device="cuda")
        k.add_kernel[(triton.cdiv(37, 8),)](dx, dy, out, 37, BLOCK=8)
        gathered = torch.empty(8, device="cuda")
        k.gather_kernel[(1,)](src.cuda(), idx.cuda(), gathered, BLOCK=8)
        count = torch.zeros(1, dtype=torch.int32, device="cuda")
        k.count_kernel[(3,)](count, torch.arange(20, dtype=torch.int32, device="cuda"), 20, BLOCK=8)
        got = out.cpu(), gathered.cpu(), count.item()
    assert torch.equal(got[0], x + y)
    assert torch.equal(got[1], src[idx])
    assert got[2] == sum(range(20))


def test_a_launch_is_deferred_on_its_stream_and_a_sync_waits_for_it(k):
    with so.virtual_device(policy="lazy"):
        buf = torch.zeros(8, device="cuda")
        (s,) = side_streams(1)
        with torch.cuda.stream(s):
            k.fill_kernel[(1,)](buf, 0, 8, 3.0, BLOCK=8)
        assert 3.0 not in buf.cpu_view().tolist()  # queued, not run (no sync yet)
        s.synchronize()
        assert buf.cpu().tolist() == [3.0] * 8


# --- races and exact sets ------------------------------------------------------------------

def _write_then_read(k, wait: bool, policy: str):
    """A kernel on one stream fills `buf`; another stream's kernel sums it."""
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


@pytest.mark.parametrize("policy", POLICIES)
def test_a_kernel_reading_what_another_streams_kernel_writes_without_a_wait_is_a_race(k, policy):
    with so.virtual_device(seed=0, policy=policy, raise_on_race=False) as vd:
        _write_then_read(k, wait=False, policy=policy)
    assert len(vd.races) == 1
    race = vd.races[0]
    assert (race.earlier.op, race.later.op) == ("Triton kernel fill_kernel", "Triton kernel sum_kernel")
    assert (race.earlier.is_write, race.later.is_write) == (True, False)
    text = str(race)
    assert "found: when the Triton kernel ran" in text
    assert "test_triton.py" in text and "_write_then_read" in text


@pytest.mark.parametrize("policy", POLICIES)
def test_the_correct_twin_with_an_event_wait_is_silent_and_right(k, policy):
    for seed in range(3):
        with so.virtual_device(seed=seed, policy=policy) as vd:
            assert _write_then_read(k, wait=True, policy=policy) == 16.0
        assert vd.races == []


def _halves(k, first: tuple, second: tuple, read: tuple | None = None):
    """Two side streams, unordered with each other, fill [start, start + n) of one
    buffer (masked stores); optionally a third sums `read` = (start, n)."""
    buf = torch.zeros(16, device="cuda")
    out = torch.zeros(1, device="cuda")
    a, b, c = side_streams(3)
    with torch.cuda.stream(a):
        k.fill_kernel[(2,)](buf, first[0], first[1], 1.0, BLOCK=8)
    with torch.cuda.stream(b):
        k.fill_kernel[(2,)](buf, second[0], second[1], 2.0, BLOCK=8)
    if read is not None:
        with torch.cuda.stream(c):
            k.sum_kernel[(1,)](buf, read[0], read[1], out, BLOCK=16)
    torch.cuda.synchronize()
    return buf.cpu()


@pytest.mark.parametrize("policy", POLICIES)
def test_two_kernels_writing_disjoint_halves_from_two_streams_are_silent(k, policy):
    for seed in range(3):
        with so.virtual_device(seed=seed, policy=policy) as vd:
            buf = _halves(k, (0, 8), (8, 8))
        assert vd.races == []
        assert buf.tolist() == [1.0] * 8 + [2.0] * 8


@pytest.mark.parametrize("policy", POLICIES)
def test_one_shared_element_is_a_race_with_exactly_the_touched_bytes(k, policy):
    with so.virtual_device(seed=0, policy=policy, raise_on_race=False) as vd:
        _halves(k, (0, 9), (8, 8))  # element 8 is written by both
    assert len(vd.races) == 1
    earlier, later = vd.races[0].earlier, vd.races[0].later
    spans = sorted([(earlier.start, earlier.stop), (later.start, later.stop)])
    assert spans == [(0, 9 * F32), (8 * F32, 16 * F32)]  # masked lanes touch nothing
    assert earlier.region is None and later.region is None


def test_a_masked_read_of_the_other_half_is_silent_and_of_a_written_element_a_race(k):
    with so.virtual_device(policy="random") as vd:
        _halves(k, (0, 8), (8, 0), read=(8, 8))  # reads [8, 16): nobody wrote there
    assert vd.races == []
    with so.virtual_device(policy="random", raise_on_race=False) as vd:
        _halves(k, (0, 8), (8, 0), read=(7, 2))  # reads element 7, which `a` wrote
    assert [(r.later.op, r.later.start, r.later.stop) for r in vd.races] == [
        ("Triton kernel sum_kernel", 7 * F32, 9 * F32)]


def test_a_gather_reads_only_the_elements_its_indices_name(k):
    """gather_kernel reads src at idx's values: a write to other elements of src on an
    unordered stream is no race; to one of them, it is."""
    for hit, expected in ((False, 0), (True, 1)):
        with so.virtual_device(policy="random", raise_on_race=False) as vd:
            src = torch.arange(16.0, device="cuda")
            idx = torch.tensor([1, 3, 5, 7], device="cuda")
            out = torch.empty(4, device="cuda")
            a, b = side_streams(2)
            with torch.cuda.stream(a):
                k.gather_kernel[(1,)](src, idx, out, BLOCK=4)
            with torch.cuda.stream(b):
                src[5 if hit else 6].fill_(-1.0)
            torch.cuda.synchronize()
        assert len(vd.races) == expected


# --- autotune, and what is refused by name --------------------------------------------------

def test_autotune_takes_the_first_config_or_the_one_named(k):
    kernel = k.block_size_kernel
    try:
        with so.virtual_device(policy="eager"):
            out = torch.zeros(1, dtype=torch.int32, device="cuda")
            kernel[(1,)](out)
            first = out.item()
            triton_config(kernel, 2)
            kernel[(1,)](out)
            by_index = out.item()
            triton_config(kernel, {"BLOCK": 8})
            kernel[(1,)](out)
            by_kwargs = out.item()
        assert (first, by_index, by_kwargs) == (4, 16, 8)
        assert kernel.best_config.kwargs == {"BLOCK": 8}
    finally:
        kernel.__dict__.pop("_streamorder_config", None)


def test_triton_config_checks_its_choice(k):
    with pytest.raises(ValueError, match="out of range"):
        triton_config(k.block_size_kernel, 3)
    with pytest.raises(ValueError, match="0 of the configs"):
        triton_config(k.block_size_kernel, {"BLOCK": 32})
    with pytest.raises(TypeError, match="not a @triton.autotune kernel"):
        triton_config(k.add_kernel, 0)


def test_what_the_interpreter_lacks_fails_by_name(k):
    with so.virtual_device(policy="eager"):
        x = torch.zeros(8, dtype=torch.int32, device="cuda")
        with pytest.raises(NotModelledError, match="inline_asm.*Triton's CPU interpreter"):
            k.asm_kernel[(1,)](x, torch.empty_like(x), BLOCK=8)


def test_an_address_outside_every_argument_fails_by_name_instead_of_touching_host_memory(k):
    with so.virtual_device(policy="eager"):
        x = torch.zeros(4, device="cuda")
        with pytest.raises(IllegalAddress, match="unmasked_kernel: a load of 4 byte.*outside"):
            k.unmasked_kernel[(1,)](x, torch.empty(64, device="cuda"), BLOCK=64)


def test_a_host_tensor_argument_is_refused_as_triton_refuses_it(k):
    with so.virtual_device(policy="eager"):
        with pytest.raises(ValueError, match=r"Pointer argument \(at 1\) cannot be accessed"):
            k.add_kernel[(1,)](torch.zeros(4, device="cuda"), torch.zeros(4),
                               torch.zeros(4, device="cuda"), 4, BLOCK=4)


def test_on_the_device_host_tensors_alone_are_refused_and_stray_addresses_stay_out_of_host_memory(k):
    with so.virtual_device(policy="eager"):
        with pytest.raises(ValueError, match=r"Pointer argument \(at 0\) cannot be accessed"):
            k.add_kernel[(1,)](torch.zeros(4), torch.zeros(4), torch.zeros(4), 4, BLOCK=4)
        x = torch.zeros(4, device="cuda")
        with pytest.raises(IllegalAddress, match="fill_kernel: a store of 4 byte"):
            k.fill_kernel[(1,)](x, 1 << 20, 4, 1.0, BLOCK=4)  # far past x's memory


def test_a_kernel_compiled_for_a_gpu_is_refused_by_name(monkeypatch):
    """Decorated without TRITON_INTERPRET (before the session set it): no CPU path."""
    monkeypatch.delenv("TRITON_INTERPRET")

    @triton.jit
    def compiled(x_ptr):
        tl.store(x_ptr, 1.0)

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert type(compiled).__name__ == "JITFunction"

    with so.virtual_device(policy="eager"):
        with pytest.raises(NotModelledError, match="'compiled' compiled for a GPU.*TRITON_INTERPRET=1"):
            compiled[(1,)](torch.zeros(1, device="cuda"))


def test_without_triton_s_interpreter_a_launch_fails_by_name(k, monkeypatch):
    """What a launch says when Triton (or numpy, which its interpreter needs) is missing."""
    monkeypatch.setitem(sys.modules, "triton.runtime.interpreter", None)
    with so.virtual_device(policy="eager"):
        with pytest.raises(NotModelledError, match=r"without Triton's CPU interpreter.*"
                                                   r"pytest-streamorder\[triton\]"):
            k.add_kernel[(1,)](*(torch.zeros(4, device="cuda") for _ in range(3)), 4, BLOCK=4)


def test_launches_on_host_tensors_outside_the_device_are_left_alone(k):
    x = torch.arange(4.0)
    out = torch.empty(4)
    k.add_kernel[(1,)](x, x, out, 4, BLOCK=4)  # the interpreter on CPU tensors, as without us
    assert out.tolist() == [0.0, 2.0, 4.0, 6.0]


# --- argument-level kinds from the source (what the real-GPU backend uses) -------------------

@pytest.mark.parametrize("name, reads, writes", [
    ("add_kernel", {"x_ptr", "y_ptr"}, {"out_ptr"}),
    ("fill_kernel", set(), {"out_ptr"}),
    ("gather_kernel", {"src_ptr", "idx_ptr"}, {"out_ptr"}),  # the store is in a helper
    ("count_kernel", {"count_ptr", "x_ptr"}, {"count_ptr"}),  # an atomic reads and writes
    ("block_size_kernel", set(), {"out_ptr"}),  # through @triton.autotune
])
def test_pointer_kinds_from_the_source(k, name, reads, writes):
    kinds = pointer_kinds(getattr(k, name))
    assert not kinds.unknown
    params = {"x_ptr", "y_ptr", "out_ptr", "src_ptr", "idx_ptr", "count_ptr"}
    assert (kinds.reads & params, kinds.writes & params) == (reads, writes)


def test_pointer_kinds_follow_loops_block_pointers_and_descriptors():
    @triton.jit
    def loop(a_ptr, c_ptr, K, BLOCK: tl.constexpr):
        ptrs = a_ptr + tl.arange(0, BLOCK)
        acc = tl.zeros((BLOCK,), tl.float32)
        for _ in range(0, K, BLOCK):
            acc += tl.load(ptrs)
            ptrs += BLOCK
        out = c_ptr + tl.arange(0, BLOCK)
        out.store(acc)

    @triton.jit
    def descriptors(a_ptr, o_ptr, M, N, BM: tl.constexpr, BN: tl.constexpr):
        src = tl.make_tensor_descriptor(a_ptr, shape=[M, N], strides=[N, 1], block_shape=[BM, BN])
        dst = tl.make_tensor_descriptor(o_ptr, shape=[M, N], strides=[N, 1], block_shape=[BM, BN])
        dst.store([0, 0], src.load([0, 0]))

    for kernel, read, written in ((loop, "a_ptr", "c_ptr"), (descriptors, "a_ptr", "o_ptr")):
        kinds = pointer_kinds(kernel)
        assert read in kinds.reads and read not in kinds.writes
        assert written in kinds.writes and written not in kinds.reads


def test_pointer_kinds_say_when_the_source_cannot_tell(k):
    kinds = pointer_kinds(k.asm_kernel)  # x reaches inline asm only as a loaded value
    assert not kinds.unknown

    @triton.jit
    def hidden(x_ptr):
        unknown_call(x_ptr)  # noqa: F821  (a name the kernel's module does not define)

    assert "unknown_call" in pointer_kinds(hidden).unknown


# --- under pytest --streamorder ---------------------------------------------------------------

KERNEL_MODULE = textwrap.dedent('''
    import triton
    import triton.language as tl

    @triton.jit
    def produce(out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, offs.to(tl.float32), mask=offs < n)
''')

TESTS = textwrap.dedent('''
    import os
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

    def test_interpreted():
        assert os.environ["TRITON_INTERPRET"] == "1"
        assert type(produce).__name__ == "InterpretedFunction"

    def test_correct():
        assert run(wait=True) == 28.0

    def test_broken():
        assert run(wait=False) == 28.0
''')


def test_under_streamorder_a_missing_wait_fails_with_a_report_naming_the_kernel(pytester):
    pytester.makepyfile(kernels=KERNEL_MODULE, test_triton_streams=TESTS)
    pytester.syspathinsert()
    # In a fresh process: this file's own `import triton` (compiled mode, before any
    # session set TRITON_INTERPRET) must not be the one the session's kernels see.
    result = pytester.runpytest_subprocess("--streamorder", "-p", "no:randomly",
                                           "-p", "no:cacheprovider")
    # test_broken's buf reuses test_correct's block, whose stale bytes happen to be the
    # right values, so its assert holds; the race is found when the kernel runs, in the
    # drain at the end of the test, and fails its teardown with the report (before, that
    # drain raised outside any phase: an INTERNALERROR).
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_broken*",
        "*stream-order race on 'buf' (float32[[]8]): read by stream 'default' is unordered "
        "with an earlier write by stream 'side'*",
        "*earlier: write by stream 'side' in Triton kernel produce, bytes [[]0, 32)*",
        "*at test_triton_streams.py:11 in run*",
    ])
    assert os.environ["TRITON_INTERPRET"] == "1"  # the session put back what it found


def test_the_session_sets_triton_interpret_and_puts_back_what_it_found(pytester, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    pytester.makepyfile(test_env="""
import os

def test_env():
    assert os.environ["TRITON_INTERPRET"] == "1"
""")
    pytester.runpytest("--streamorder", "-p", "no:randomly").assert_outcomes(passed=1)
    assert "TRITON_INTERPRET" not in os.environ
    pytester.runpytest("-p", "no:randomly").assert_outcomes(failed=1)  # without --streamorder


def test_a_reinterpreted_tensor_argument_runs_on_the_device_buffer(k):
    """triton.reinterpret wraps a tensor in Triton's TensorWrapper: the kernel sees the
    device buffer's bytes as another dtype."""
    with so.virtual_device(policy="random"):
        bits = torch.zeros(8, dtype=torch.int32, device="cuda")
        k.fill_kernel[(1,)](triton.reinterpret(bits, tl.float32), 0, 8, 1.0, BLOCK=8)
        got = bits.tolist()
    assert got == [torch.tensor(1.0).view(torch.int32).item()] * 8


def test_the_gpu_backend_s_launch_sets_bind_arguments_by_name(k):
    """What gpu/triton.py hands the detector for a launch (computed on host tensors here:
    no GPU needed to check the binding and the declarations)."""
    from pytest_streamorder.gpu.triton import launch_sets
    from pytest_streamorder.ops.triton_access import triton_accesses

    x, y, out = torch.zeros(4), torch.zeros(4), torch.zeros(4)
    anywhere = dict(on_device=lambda t: True)
    reads, writes = launch_sets(k.add_kernel, (x, y), dict(out_ptr=out, n=4, BLOCK=4,
                                                           num_warps=4), **anywhere)
    assert [id(t) for t in reads] == [id(x), id(y)] and [id(t) for t in writes] == [id(out)]
    buf = torch.zeros(16)
    triton_accesses(k.fill_kernel, lambda out_ptr, start, n, **_: ([], [out_ptr[start:start + n]]))
    try:
        reads, writes = launch_sets(k.fill_kernel, (buf, 8, 4, 1.0), dict(BLOCK=8), **anywhere)
    finally:
        del k.fill_kernel._streamorder_accesses
    assert reads == [] and len(writes) == 1
    assert (writes[0].storage_offset(), writes[0].numel()) == (8, 4)
