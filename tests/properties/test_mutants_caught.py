"""Every broken variant in reference_impl/mutants.py is caught by the overlap state
machine within a bounded budget, and its counterexample shrinks to a few rules.

Per mutant: the machine (pool of 4, at most STEP_COUNT rules per example, derandomized,
no example database) must fail within BUDGET examples, with a race report
(StreamRaceError) or a stale value (StaleValueError); Hypothesis then shrinks the failing
program and schedule together, and the shrunk program must have at most MAX_SHRUNK_RULES
rules. `-rP` prints each mutant's shrunk program.

The shrink phase costs most of this file's time. It runs in every profile; set
STREAMORDER_MUTANT_SHRINK=0 to skip it (detection is still asserted, shrunk sizes not).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from pytest_streamorder.sim.device import StreamRaceError
from pytest_streamorder.strategies import StaleValueError, overlap_machine
from reference_impl.mutants import MUTANTS

pytestmark = pytest.mark.no_streamorder  # each example opens its own virtual device

POOL = 4
STEP_COUNT = 10  # rules per example at most
BUDGET = 200  # examples that may be generated before the mutant must have been caught
MAX_SHRUNK_RULES = 8  # initialize included
SHRINK = os.environ.get("STREAMORDER_MUTANT_SHRINK", "1") != "0"


def catch(name: str):
    """Run the machine against one mutant; returns (exception, machine class)."""
    mutant = MUTANTS[name]
    machine = overlap_machine(mutant.future_map_cls, loop_cls=mutant.loop_cls, pool_size=POOL,
                              device="virtual", name=f"Mutant_{name}")
    phases = [Phase.generate, Phase.shrink] if SHRINK else [Phase.generate]
    with pytest.raises((StreamRaceError, StaleValueError)) as info:
        run_state_machine_as_test(machine, settings=settings(
            max_examples=BUDGET, database=None, derandomize=True, report_multiple_bugs=False,
            phases=phases, deadline=None, stateful_step_count=STEP_COUNT,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]))
    return info.value, machine


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_is_caught_and_shrinks(name):
    error, machine = catch(name)
    run = machine.final_run
    assert run is not None, "Hypothesis did not replay a final (shrunk) example"
    kind = "race report" if isinstance(error, StreamRaceError) else "stale value"
    print(f"{name}: caught by {kind}; shrunk to {run.rules} rules, {len(run.ops)} ops, "
          f"{run.steps} loop steps, policy {run.policy!r}, {run.choices} scheduling choices\n"
          f"{run.program}\n"
          + "\n".join(getattr(error, "__notes__", [])) + f"\n{str(error).splitlines()[0]}")
    if SHRINK:
        assert run.rules <= MAX_SHRUNK_RULES, f"{name} shrank only to {run.rules} rules:\n{run.program}"
