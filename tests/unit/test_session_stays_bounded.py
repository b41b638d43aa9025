"""The model follows what is alive, not everything a session or a test ever made: a stream
the program dropped gives its vector-clock slot to later streams, its scheduler queue
and its cached blocks back at the next host sync, so the 500th test of a suite, or the
500th iteration of a loop that makes a stream each time, costs what the first did
(before, every stream ever made lengthened every clock and kept its cached blocks: a
schedule of the overhead benchmark cost 11 ms at first and 91 ms after 600 schedules,
and a loop making a stream per iteration 0.6 ms an iteration at first, 3.7 ms after 2,000)."""

import pytest

torch = pytest.importorskip("torch")
import torch._dynamo  # noqa: E402,F401  (imported once here: in-process runs cannot re-import it)

import pytest_streamorder.sim.session  # noqa: E402,F401  (likewise)

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.skipif(torch.backends.cuda.is_built(),
                                reason="a CUDA build of torch: the session runtime is for CPU builds")

# Each test makes two streams of its own, allocates on each and frees, the way an overlap
# scheduler's test builds its worker; a session-scoped stream lives across all of them.
SUITE = """
import gc, pytest, torch
from pytest_streamorder.model.objects import Access, Agent, Allocation
from pytest_streamorder.sim.runtime import current

MODEL = (Access, Agent, Allocation)
SEEN = []
BASELINE = []

@pytest.fixture(scope="session")
def copy_stream():
    return torch.cuda.Stream()

def _state():
    vd = current()
    return (len(vd.hb.agents), len(vd._blocks), torch.cuda.memory_reserved(),
            vd.hb.freed_blocks())

def _model_objects():
    gc.collect()
    return sum(isinstance(o, MODEL) for o in gc.get_objects())

@pytest.mark.parametrize("step", range(30))
def test_worker(step, copy_stream):
    forward, d2h = torch.cuda.Stream(), torch.cuda.Stream()
    ready = torch.cuda.Event()
    with torch.cuda.stream(forward):
        out = torch.arange(64 * (step % 3 + 1), device="cuda") * 2
        ready.record()
    d2h.wait_event(ready)
    with torch.cuda.stream(d2h):
        host = out.to("cpu", non_blocking=True)
        out.record_stream(d2h)
    with torch.cuda.stream(copy_stream):
        torch.ones(32, device="cuda").sum()
    del out
    d2h.synchronize()
    assert host[-1].item() == 2 * (64 * (step % 3 + 1) - 1)
    SEEN.append(_state())
    if step == 2 and not BASELINE:
        BASELINE.append(_model_objects())

def test_zz_bounded():
    first, last = SEEN[2], SEEN[-1]
    assert len(SEEN) == 30 * SCHEDULES
    assert last[0] == first[0] <= 6, SEEN  # host, default, copy_stream, forward, d2h (+1 spare)
    assert last[1] <= first[1] + 6, SEEN
    assert last[2] <= first[2] + 6 * 512, SEEN
    assert last[3] <= first[3] + 6, SEEN  # freed allocations the model holds
    assert _model_objects() <= BASELINE[0] + 20  # the model keeps nothing per test
"""


@pytest.mark.parametrize("schedules", [1, 3])
def test_streams_a_test_dropped_give_back_their_slots_and_blocks(pytester, schedules):
    pytester.makepyfile(test_suite=SUITE.replace("SCHEDULES", str(schedules)))
    result = pytester.runpytest("--streamorder", f"--streamorder-schedules={schedules}",
                                "--streamorder-explore=random",  # every schedule runs
                                "-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=31)


def test_a_block_freed_after_its_stream_retired_is_released_not_cached(pytester):
    pytester.makepyfile(test_late_free="""
import pytest, torch
from pytest_streamorder.sim.runtime import current

KEPT = []

def test_a_allocates_on_a_stream_it_drops():
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        KEPT.append(torch.zeros(1024, device="cuda"))
    side.synchronize()

def test_b_frees_it():
    vd = current()
    reserved = torch.cuda.memory_reserved()
    blocks = len(vd._blocks)
    KEPT.clear()  # freed on a stream retired at the end of test a: nothing can reuse it
    assert torch.cuda.memory_reserved() == reserved - 4096
    assert len(vd._blocks) == blocks - 1
""")
    result = pytester.runpytest("--streamorder", "--streamorder-schedules=1",
                                "-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_a_loop_making_a_stream_per_iteration_keeps_the_model_small():
    import pytest_streamorder as so

    with so.virtual_device(seed=0, policy="delay") as vd:
        x = torch.zeros(64, device="cuda")
        sizes = []
        for i in range(300):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                y = x + i
            torch.cuda.current_stream().wait_stream(side)
            if i % 10 == 9:
                torch.cuda.synchronize()
                sizes.append((len(vd.hb.agents), len(vd.scheduler._live), len(vd._blocks)))
        assert int(y[0]) == 299
    # host, default, and at most the 10 streams made since the last sync (+1 in a cycle)
    assert max(sizes) <= (13, 12, 12), sizes
    assert sizes[-1] == sizes[5], sizes
