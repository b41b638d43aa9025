"""The Hypothesis suite of the reference publish/resolve protocol.

Hypothesis generates overlap programs (batches of request-pool slots, DP-idle steps, spec
on/off, slot reuse, the same slot over consecutive steps, full syncs) *and* the virtual
device's schedule, and checks that what `FutureMap.resolve_seq_lens_cpu` resolves
(`seq_lens_cpu`, `seq_lens_sum`, device `seq_lens`) equals the oracle and that no race is
reported. The class under test is `reference_impl.future_map.FutureMap`, looked up by name
when each example starts, so a mutation tool (or a monkeypatch) that swaps it is tested.

Devices: every example gets its own virtual device with its schedule drawn from
Hypothesis. Under plain `pytest` the runner opens it; under `pytest --streamorder` the
plugin does, for each example of a @given test, and the runner uses that one. The state
machine's tests open devices themselves (`no_streamorder`); its unittest TestCase is not
wrapped by the plugin at all. With a real GPU the `*_on_real_gpu` tests run there too.

Run with `--hypothesis-show-statistics` to see the events reached (policies, idle-DP,
spec off, slot reuse, same slot in consecutive steps, whole-pool batches).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.stateful import run_state_machine_as_test

import reference_impl.future_map
from pytest_streamorder import strategies as sos
from pytest_streamorder.strategies import (
    POLICIES, StaleValueError, overlap_machine, overlap_programs, run_program, schedules,
)

POOL = 8
FUTURE_MAP = "reference_impl.future_map:FutureMap"  # looked up when each example starts

# The ci profile (CI=true) runs the reference machine for at least 2000 examples.
IN_CI = settings.default is settings.get_profile("ci")
REFERENCE_EXAMPLES = max(2000, settings.default.max_examples) if IN_CI else settings.default.max_examples
MACHINE_SETTINGS = dict(deadline=None, stateful_step_count=20,
                        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Every test here runs its examples on devices of its own (see the module doc).
# The machine and the tests that run it manage a virtual device per example themselves;
# the @given tests below are run per example by `pytest --streamorder` when it is on.
own_devices = pytest.mark.no_streamorder


def _real_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


needs_gpu = pytest.mark.skipif(not _real_gpu(), reason="needs a real CUDA GPU")

# --- the state machine over the overlap loop ----------------------------------------------

ReferenceMachine = overlap_machine(
    FUTURE_MAP, pool_size=POOL, device="virtual", name="ReferenceMachine",
    settings=settings(max_examples=REFERENCE_EXAMPLES, **MACHINE_SETTINGS))
TestReferenceMachine = ReferenceMachine.TestCase

ReferenceMachineOnGPU = overlap_machine(
    FUTURE_MAP, pool_size=POOL, device="cuda", name="ReferenceMachineOnGPU",
    settings=settings(**MACHINE_SETTINGS))
TestReferenceMachineOnRealGPU = needs_gpu(ReferenceMachineOnGPU.TestCase)


# --- @given over whole programs -----------------------------------------------------------

@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=overlap_programs(POOL, max_ops=16), schedule=schedules())
def test_reference_programs_resolve_fresh_lengths(program, schedule):
    run_program(program, schedule, future_map_cls=FUTURE_MAP, device="virtual")


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=overlap_programs(4, max_ops=24, spec_mode="on"),
       schedule=schedules(["random", "pct", "delay"]))
def test_reference_spec_decode_with_idle_and_reuse(program, schedule):
    """Pure speculative decoding on a small pool: every step resolves through the map,
    so DP-idle steps and reused slots meet in-flight publishes often."""
    run_program(program, schedule, future_map_cls=FUTURE_MAP, device="virtual")


@needs_gpu
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=overlap_programs(POOL, max_ops=24, delays=True))
def test_reference_programs_on_real_gpu_with_delays(program):
    run_program(program, future_map_cls=FUTURE_MAP, device="cuda")


# --- what the suite reaches, and how it finds the class under test -----------------------

@own_devices
def test_machine_reaches_every_kind_of_step():
    """The labels Hypothesis' statistics show: idle-DP, spec on and off, slot reuse, the
    same slot in consecutive steps, whole-pool batches."""
    machine = overlap_machine(FUTURE_MAP, pool_size=4, device="virtual", name="CoverageMachine")
    run_state_machine_as_test(machine, settings=settings(
        max_examples=60, database=None, derandomize=True, **MACHINE_SETTINGS))
    wanted = {"step: DP-idle (empty batch)", "step: spec on", "step: spec off",
              "step: whole pool", "slot reuse (freed and admitted again)",
              "step: same slot as the previous step"}
    missing = wanted - set(machine.reached)
    assert not missing, f"never reached: {sorted(missing)}; reached {dict(machine.reached)}"
    assert len({k for k in machine.reached if k.startswith("policy: ")}) >= 2


@own_devices
@pytest.mark.parametrize("policy", POLICIES)
def test_machine_runs_under_each_policy(policy):
    """Each policy on its own (a derandomized draw of 60 examples may miss one of five),
    with the reference class: no report, and the policy's label reached."""
    machine = overlap_machine(FUTURE_MAP, pool_size=4, device="virtual", policies=(policy,),
                              name=f"PolicyMachine_{policy}")
    run_state_machine_as_test(machine, settings=settings(
        max_examples=8, database=None, derandomize=True, **MACHINE_SETTINGS))
    assert machine.reached[f"policy: {policy}"] >= 8
    assert machine.reached["step: spec on"] + machine.reached["step: spec off"] > 0


@own_devices
def test_class_under_test_is_looked_up_when_each_example_starts(monkeypatch):
    """Swap reference_impl.future_map.FutureMap (as a mutation tool does): the default
    machine tests the swapped class, not a copy taken at import."""
    from reference_impl.mutants import D2HNotGated

    machine = overlap_machine(pool_size=4, device="virtual", name="SwappedMachine")
    monkeypatch.setattr(reference_impl.future_map, "FutureMap", D2HNotGated)
    with pytest.raises(AssertionError) as info:
        run_state_machine_as_test(machine, settings=settings(
            max_examples=50, database=None, derandomize=True, report_multiple_bugs=False,
            phases=[Phase.generate], **MACHINE_SETTINGS))
    assert "stream-order race" in str(info.value) or isinstance(info.value, StaleValueError)
    assert machine.last_run is not None


@own_devices
def test_machine_refuses_to_nest_in_an_active_virtual_device():
    import pytest_streamorder as so

    with so.virtual_device():
        with pytest.raises(RuntimeError, match="virtual device is already active"):
            sos.OverlapRunner(4, device="virtual")


@own_devices
def test_auto_device_is_the_virtual_device_without_a_gpu(monkeypatch):
    monkeypatch.delenv(sos.DEVICE_ENV, raising=False)
    assert sos.resolve_device("auto") == ("cuda" if _real_gpu() else "virtual")
    monkeypatch.setenv(sos.DEVICE_ENV, "virtual")
    assert sos.resolve_device("auto") == "virtual"
    assert sos.resolve_device("cpu") == "cpu"
