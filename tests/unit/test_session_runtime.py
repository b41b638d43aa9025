"""The session-wide virtual CUDA runtime of `pytest --streamorder` (issue 12, items 1-3, 6):
CUDA is present from the first conftest.py on, fixtures of every scope and unittest
classes run on one virtual device, each schedule is a whole setup/call/teardown, and the
outer process is left as it was."""

import textwrap

import pytest

torch = pytest.importorskip("torch")
import torch._dynamo  # noqa: E402,F401  (imported once here: in-process runs cannot re-import it)

import pytest_streamorder.sim.session  # noqa: E402,F401  (likewise)

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.skipif(torch.backends.cuda.is_built(),
                                reason="a CUDA build of torch: the session runtime is for CPU builds")

ARGS = ("--streamorder", "-p", "no:randomly", "-p", "no:cacheprovider")


def _run(pytester, *args):
    return pytester.runpytest(*ARGS, *args)


# --- 1. CUDA from the first conftest.py on ---------------------------------------------

HELPER = """
import torch
# Decided once, at import time, the way sglang.srt.utils.is_cuda() does.
IS_CUDA = torch.cuda.is_available() and torch.version.cuda is not None
"""


def test_an_import_time_check_in_a_conftest_helper_takes_the_cuda_path(pytester):
    pytester.makepyfile(platform_helper=HELPER)
    pytester.makeconftest("""
import platform_helper
SEEN_AT_CONFTEST = platform_helper.IS_CUDA
""")
    pytester.makepyfile(test_path="""
import torch, conftest, platform_helper

def test_path():
    assert conftest.SEEN_AT_CONFTEST is True
    assert platform_helper.IS_CUDA is True
    assert torch.version.cuda == "12.4"
    props = torch.cuda.get_device_properties(0)
    assert (props.major, props.minor) == (8, 0) == torch.cuda.get_device_capability()
    assert props.multi_processor_count == 108 and props.total_memory == 80 * 2**30
    assert props.uuid.startswith("GPU-") and "Virtual" in torch.cuda.get_device_name()
    assert torch.cuda.device_count() == 1 and torch.cuda.current_device() == 0
""")
    pytester.syspathinsert()
    result = _run(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["streamorder: virtual GPU NVIDIA A100-SXM4-80GB (Virtual, "
                                 "pytest-streamorder) (sm80), torch.version.cuda 12.4*"])


def test_the_capability_setting_makes_it_an_sm90(pytester):
    pytester.makepyfile(test_cap="""
import torch

def test_cap():
    assert torch.cuda.get_device_capability() == (9, 0)
    assert torch.cuda.get_device_properties().multi_processor_count == 132
    assert torch.cuda.get_device_name().startswith("NVIDIA H100")
""")
    _run(pytester, "--streamorder-capability=sm90").assert_outcomes(passed=1)
    pytester.makeini("[pytest]\nstreamorder_capability = sm90\n")
    _run(pytester).assert_outcomes(passed=1)


def test_a_bad_capability_is_a_usage_error(pytester):
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = _run(pytester, "--streamorder-capability=sm75")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*flag --streamorder-capability=sm75: capability must be one of "
                                 "sm80, sm90*"])


def test_without_streamorder_nothing_is_virtual(pytester):
    pytester.makepyfile(platform_helper=HELPER)
    pytester.makeconftest("import platform_helper\n")
    pytester.makepyfile(test_path="""
import torch, platform_helper

def test_path():
    assert platform_helper.IS_CUDA is False and torch.version.cuda is None
""")
    pytester.syspathinsert()
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=1)


def test_the_outer_process_is_left_as_it_was(pytester):
    """pytester runs pytest in this process: after an inner --streamorder session, torch
    is the CPU build again, every torch.cuda attribute is the one it was, no dispatch mode
    and no backend is left active."""
    from torch.overrides import _get_current_function_mode_stack

    from pytest_streamorder import backend
    from pytest_streamorder.sim import runtime

    before = dict(vars(torch.cuda))
    pytester.makepyfile(test_dev="""
import torch

def test_dev():
    torch.ones(2, device="cuda").add_(1).tolist()
""")
    _run(pytester).assert_outcomes(passed=1)
    assert torch.cuda.is_available() is False
    assert torch.version.cuda is None
    assert dict(vars(torch.cuda)) == before
    assert backend.active_backend() is None and runtime.current() is None
    assert not _get_current_function_mode_stack()
    assert runtime.guard_missing == ""


def test_collect_only_sees_the_virtual_gpu_when_the_suite_imports_torch(pytester):
    """Import-time checks run during collection, so --collect-only --streamorder installs
    the runtime too, when something first imports torch (a torch-free collection imports
    no torch: tests/unit/test_plugin_hygiene.py)."""
    pytester.makepyfile(platform_helper=HELPER)
    pytester.makepyfile(test_path="""
import platform_helper
assert platform_helper.IS_CUDA, "collection saw no CUDA"

def test_path():
    pass
""")
    pytester.syspathinsert()
    result = pytester.runpytest_subprocess("--collect-only", "--streamorder", "-p", "no:randomly")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["*test_path*"])


# --- 2. fixtures of every scope on the session's device ----------------------------------

FIXTURES = """
import pytest, torch

SETUPS = {{"module": 0, "session": 0, "function": 0}}

@pytest.fixture(scope="session")
def side():
    SETUPS["session"] += 1
    return torch.cuda.Stream()

@pytest.fixture(scope="module")
def pool(side):
    SETUPS["module"] += 1
    buf = torch.zeros(8, dtype=torch.int64, device="cuda")
    staging = torch.arange(8, dtype=torch.int64).pin_memory()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        buf.copy_(staging, non_blocking=True)      # fixture: init on a side stream
    {sync}
    return buf, staging

@pytest.fixture
def scratch():
    SETUPS["function"] += 1
    return torch.empty(8, dtype=torch.int64, device="cuda")
"""


# Uses FIXTURES on 5 schedules (also run on a real GPU: tests/gpu/test_plugin_on_gpu.py).
POOL_TESTS = """
import torch, conftest

def test_mutates_and_reads(pool, scratch):
    buf, staging = pool
    assert buf.tolist() == list(range(8))        # the initial value, on every schedule
    assert staging.tolist() == list(range(8))
    buf.mul_(10)
    staging.fill_(-1)                            # host write to the pinned staging
    scratch.copy_(buf)
    assert scratch.tolist() == [10 * i for i in range(8)]

def test_counts():
    assert conftest.SETUPS == {"session": 1, "module": 1, "function": 5}
"""


def test_broader_fixtures_run_once_and_their_memory_is_restored_per_schedule(pytester):
    pytester.makeconftest(FIXTURES.format(sync="side.synchronize()"))
    pytester.makepyfile(test_pool=POOL_TESTS)
    result = _run(pytester, "--streamorder-schedules=5", "--streamorder-explore=random")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*2 tests checked, 10 schedules explored*0 races found*"])


def test_an_unsynced_fixture_write_that_the_test_reads_is_a_race_in_that_test(pytester):
    pytester.makeconftest(FIXTURES.format(sync="pass  # the bug: no sync, no wait"))
    pytester.makepyfile(test_pool="""
def test_reads_pool(pool):
    buf, _ = pool
    assert buf.tolist() == list(range(8))

def test_later_user(pool):
    buf, _ = pool
    assert buf.sum().item() == 28
""")
    result = _run(pytester)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([
        "*StreamRaceError: stream-order race on 'buf'*",
        "*earlier: write by stream * in H2D copy_*",
        "*at conftest.py:17 in pool*",
        "*replay: pytest --streamorder --streamorder-replay=* 'test_pool.py::test_reads_pool'*",
        "FAILED test_pool.py::test_reads_pool - *StreamRace*"])


def test_a_race_in_a_fixture_fails_its_setup_with_the_replay_line(pytester):
    pytester.makepyfile(test_setup="""
import pytest, torch

@pytest.fixture
def published():
    fwd, d2h = torch.cuda.Stream(), torch.cuda.Stream()
    buf = torch.zeros(4, device="cuda")
    with torch.cuda.stream(fwd):
        buf.add_(1)
    with torch.cuda.stream(d2h):
        return buf.clone()                      # reads buf before waiting for fwd

def test_uses(published):
    pass
""")
    result = _run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at setup of test_uses*",
        "*StreamRaceError: stream-order race on 'buf'*",
        "*failed on schedule 1 (policy lazy, seed 0) in setup;*",
        "*replay: pytest --streamorder --streamorder-replay=*"])


def test_a_test_never_fails_for_an_earlier_tests_leftovers(pytester):
    pytester.makepyfile(test_order="""
import torch

KEEP = {}

def test_a_leaves_unsynced_work():
    side = torch.cuda.Stream()
    KEEP["buf"] = buf = torch.zeros(1024, device="cuda")
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(20):
            buf.add_(1)                          # never synced, never waited on

def test_b_reads_it_on_the_default_stream():
    assert KEEP["buf"].sum().item() == 20 * 1024
""")
    result = _run(pytester)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*0 races found*"])


def test_an_earlier_tests_long_work_is_complete_in_virtual_time_for_the_next(pytester):
    """Each schedule's virtual clock starts at 0; work left by an earlier test (a 50 ms
    sleep on a session stream, a block held by record_stream) must not look in flight to
    the next one: the model synced the device between them, in time as well."""
    pytester.makepyfile(test_time="""
import torch

KEEP = {}

def test_a_sleeps_on_a_side_stream():
    KEEP["side"] = side = torch.cuda.Stream()
    tmp = torch.empty(4096, device="cuda")
    KEEP["block"] = tmp.data_ptr()
    with torch.cuda.stream(side):
        torch.cuda._sleep(int(50e6 * 1.98))       # 50 ms, never synced by the test
        tmp.record_stream(side)
    del tmp

def test_b_sees_it_complete():
    assert KEEP["side"].query()
    assert torch.empty(4096, device="cuda").data_ptr() == KEEP["block"]
""")
    result = _run(pytester, "--streamorder-schedules=4")
    result.assert_outcomes(passed=2)


# --- 3. unittest.TestCase --------------------------------------------------------------

UNITTEST = """
import collections, unittest, torch

class TestRelay(unittest.TestCase):
    setups = collections.Counter()  # setUp runs per schedule (setUpClass once)

    @classmethod
    def setUpClass(cls):
        cls.fwd, cls.d2h = torch.cuda.Stream(), torch.cuda.Stream()
        cls.buf = torch.zeros(4, dtype=torch.int64, device="cuda")
        cls.pinned = torch.zeros(4, dtype=torch.int64, pin_memory=True)

    def setUp(self):
        type(self).setups[self._testMethodName] += 1
        torch.cuda.synchronize()

    def test_gated(self):
        with torch.cuda.stream(self.fwd):
            self.buf.add_(7)
        self.d2h.wait_stream(self.fwd)
        with torch.cuda.stream(self.d2h):
            self.pinned.copy_(self.buf, non_blocking=True)
        self.d2h.synchronize()
        self.assertEqual(self.pinned.tolist(), [7] * 4)   # buf restored each schedule

    def test_ungated(self):
        with torch.cuda.stream(self.fwd):
            self.buf.add_(7)
        with torch.cuda.stream(self.d2h):                 # missing: d2h.wait_stream(fwd)
            self.pinned.copy_(self.buf, non_blocking=True)
        self.d2h.synchronize()
        self.assertEqual(self.pinned.tolist(), [7] * 4)

    def test_z_setup_count(self):
        # 3 schedules each; the failing one stops at its first
        self.assertEqual(dict(type(self).setups), {"test_gated": 3, "test_ungated": 1,
                                                   "test_z_setup_count": type(self).setups[
                                                       "test_z_setup_count"]})
"""


def test_unittest_methods_run_under_the_schedules_with_setupclass_state(pytester):
    pytester.makepyfile(test_relay=UNITTEST)
    result = _run(pytester, "--streamorder-schedules=3", "--streamorder-explore=random")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*StreamRaceError: stream-order race on 'buf'*",
        "*3 tests checked*",
        "FAILED test_relay.py::TestRelay::test_ungated*"])


# --- semantics of no_streamorder, Hypothesis and virtual_device() in a test -------------

def test_no_streamorder_suspends_the_runtime_for_the_test(pytester):
    pytester.makepyfile(test_marks="""
import pytest, torch
import pytest_streamorder as so

@pytest.mark.no_streamorder
def test_plain():
    assert not torch.cuda.is_available() and torch.version.cuda is None
    with so.virtual_device() as vd:               # a device of its own
        torch.ones(2, device="cuda").add_(1).tolist()
    assert vd.ops_issued == 3

def test_checked_again():
    assert torch.cuda.is_available() and torch.version.cuda == "12.4"
""")
    result = _run(pytester)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*1 tests checked, 1 schedules explored*",
                                 "1 of them decided by 1 schedule*"])


def test_virtual_device_inside_a_checked_test_is_a_named_error(pytester):
    pytester.makepyfile(test_nested="""
import pytest_streamorder as so

def test_nested():
    with so.virtual_device():
        pass
""")
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*RuntimeError: virtual_device() inside a test under pytest "
                                 "--streamorder: the session's virtual device is already active*"])


def test_each_hypothesis_example_is_a_run_on_the_session_device(pytester):
    pytester.makepyfile(test_hyp="""
import pytest, torch
from hypothesis import given, settings, strategies as st
import pytest_streamorder.sim.device as dev

RUNS, DEVICES = [], set()

@pytest.fixture(scope="module")
def table():
    return torch.arange(4, device="cuda")

@settings(max_examples=15, database=None)
@given(st.integers(0, 3))
def test_example(table, n):
    DEVICES.add(id(dev._active))
    RUNS.append(dev._active.run)
    assert table[n].item() == n

def test_after():
    assert len(DEVICES) == 1 and len({id(r) for r in RUNS}) == len(RUNS) >= 15
    assert all(r.hypothesis_example for r in RUNS)
""")
    result = _run(pytester)
    result.assert_outcomes(passed=2)


# --- 6. no aborts ---------------------------------------------------------------------------

def test_without_the_native_guard_a_grad_forward_is_refused_by_name(monkeypatch):
    """Where the guard cannot be built, the path that would abort is refused, naming why."""
    import pytest_streamorder as so
    from pytest_streamorder.sim import runtime

    monkeypatch.setattr(runtime, "guard_missing", "no compiler here (a test)")
    with so.virtual_device(policy="eager"):
        model = torch.nn.Linear(4, 4).to("cuda")
        x = torch.randn(2, 4, device="cuda")
        with pytest.raises(so.NotModelledError, match=r"linear on a virtual CUDA tensor that "
                           r"requires grad is not modelled.*no compiler here \(a test\)"):
            model(x)
        with pytest.raises(so.NotModelledError, match=r"autograd \(requires_grad=True\).*"
                           r"it would also abort the process: no compiler here"):
            torch.zeros(2, device="cuda", requires_grad=True)


def test_the_session_builds_the_guard_before_changing_torch_version_cuda(pytester):
    """A module forward with grad-requiring parameters under the session: no abort."""
    pytester.makepyfile(test_module="""
import torch

def test_forward():
    model = torch.nn.Linear(4, 4).to("cuda")
    model(torch.randn(2, 4, device="cuda"))
""")
    result = pytester.runpytest_subprocess(*ARGS)
    assert "terminate called" not in result.stderr.str()
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    result.stdout.fnmatch_lines(["*1 tests checked*"])


# --- a stale value whose race resolves only later --------------------------------------

STALE_FIRST = """
import torch

def test_ungated_indexed_publish():
    fwd, d2h = torch.cuda.Stream(), torch.cuda.Stream()
    buf = torch.zeros(8, dtype=torch.int64, device="cuda")
    slots = torch.tensor([2, 3], device="cuda")
    host = torch.empty(8, dtype=torch.int64, pin_memory=True)
    torch.cuda.synchronize()
    with torch.cuda.stream(fwd):
        buf[slots] = 7                    # index_put_: its elements are known when it runs
    with torch.cuda.stream(d2h):          # missing: d2h.wait_stream(fwd)
        host.copy_(buf, non_blocking=True)
    d2h.synchronize()
    assert host[2:4].tolist() == [7, 7]
"""


def test_a_stale_value_failure_names_the_race_found_when_the_late_work_runs(pytester):
    """Under lazy, the D2H runs and the host reads a stale value before the late
    index_put_ ran, so its exact elements (and the race) are not known when the assert
    fails: the plugin runs the leftover work and names the race on the failure."""
    pytester.makepyfile(test_stale=STALE_FIRST)
    result = _run(pytester, "--streamorder-policy=lazy", "--streamorder-schedules=1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*assert ?0, 0? == ?7, 7?*",
        "*queued work, run after the failure, shows 1 race(s) behind it*",
        "*StreamRaceError: stream-order race on 'buf'*",
        "*missing edge: stream 'd2h' read this before waiting for any event recorded on 'fwd'*",
        "*replay: pytest --streamorder --streamorder-replay=v1.lazy.s0*",
    ])
