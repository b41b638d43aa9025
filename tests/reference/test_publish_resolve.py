"""The reference suite: the seed's publish/resolve protocol in an overlap loop, on CUDA.

`pytest --streamorder tests/reference` runs it on the virtual CUDA device under
adversarial schedules (the main job in the README); on a machine with a GPU it runs on
the real device; elsewhere it skips.
"""

import random

import pytest
import torch
from hypothesis import given, settings

from pytest_streamorder.strategies import overlap_programs
from pytest_streamorder.strategies import run_program as run_overlap_program
from reference_impl.overlap_loop import OverlapLoop

POOL = 16


def cuda_or_skip() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: run with --streamorder (virtual device) or on a GPU")


def run_program(seed: int, steps: int, p_spec: float, p_idle: float, p_churn: float) -> int:
    """A random overlap program; every resolved value is checked against the oracle."""
    rng = random.Random(seed)
    loop = OverlapLoop(POOL, device="cuda")
    for slot in range(1, POOL):
        loop.admit(slot, rng.randint(1, 9))
    checked = 0
    for _ in range(steps):
        if rng.random() < p_churn and loop.live_slots:  # a request ends, a new one takes its slot
            slot = rng.choice(sorted(loop.live_slots))
            loop.free(slot)
            loop.admit(slot, rng.randint(1, 9))
        live = sorted(loop.live_slots)
        batch = [] if rng.random() < p_idle else rng.sample(live, rng.randint(1, len(live)))
        result = loop.step(batch, [rng.randint(0, 4) for _ in batch], spec=rng.random() < p_spec)
        result.check()  # host-side values: seq_lens_cpu, seq_lens_sum
        checked += 1
    for result in loop.synchronize():
        result.check()  # device seq_lens too
    return checked


def test_spec_decode_resolves_fresh_lengths():
    cuda_or_skip()
    assert run_program(seed=1, steps=12, p_spec=1.0, p_idle=0.0, p_churn=0.0) == 12


def test_dp_idle_and_spec_off_steps():
    cuda_or_skip()
    assert run_program(seed=2, steps=16, p_spec=0.5, p_idle=0.3, p_churn=0.0) == 16


def test_slot_reuse_and_chunked_prefill():
    cuda_or_skip()
    assert run_program(seed=3, steps=16, p_spec=0.8, p_idle=0.1, p_churn=0.4) == 16


def test_same_slot_every_step():
    cuda_or_skip()
    loop = OverlapLoop(POOL, device="cuda")
    loop.admit(5, 1)
    for step in range(10):
        result = loop.step([5], [2], spec=True)
        assert result.seq_lens_cpu == [1 + 2 * step]
    for result in loop.synchronize():
        result.check()


@settings(max_examples=40, deadline=None)
@given(program=overlap_programs(8, max_ops=16))
def test_generated_programs_resolve_fresh_lengths(program):
    """Hypothesis draws the program (batches, idle-DP, spec on/off, slot reuse, the same
    slot in consecutive steps); under --streamorder each example runs on its own virtual
    device with its schedule drawn from the example, so a failure shrinks to a few steps."""
    cuda_or_skip()
    run_overlap_program(program, future_map_cls="reference_impl.future_map:FutureMap",
                        device="auto")
