"""The token-relay machine: `overlap_machine(..., resolve_forward_inputs=...)` fuzzes a
FutureMap built as SGLang's (reference_impl/relay_map.py: `FutureMap(device, spec_algo,
req_to_token_pool, needs_cpu_seq_lens)`) with no adapter class, checks every relayed token
and spec extra against the oracle, catches the relay mutants and shrinks them.

The ci profile (CI=true) runs the unmutated map for at least 2000 examples.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import run_state_machine_as_test

from pytest_streamorder.sim.device import StreamRaceError
from pytest_streamorder.strategies import (
    BATCH_PROTOCOL, SpecMode, StaleValueError, overlap_machine,
)
from reference_impl.relay_mutants import RELAY_MUTANTS

pytestmark = pytest.mark.no_streamorder  # each example opens its own virtual device

MAP = "reference_impl.relay_map:FutureMap"  # the class itself, SGLang's constructor shape
RESOLVE = "reference_impl.relay_map:resolve_forward_inputs"
IN_CI = settings.default is settings.get_profile("ci")
RELAY_EXAMPLES = max(2000, settings.default.max_examples) if IN_CI else settings.default.max_examples
QUIET = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- the unmutated map ---------------------------------------------------------------------

RelayMachine = overlap_machine(MAP, resolve_forward_inputs=RESOLVE, pool_size=6, device="virtual",
                               name="RelayMachine", settings=settings(
                                   max_examples=RELAY_EXAMPLES, stateful_step_count=12, **QUIET))
TestRelayMachine = RelayMachine.TestCase

# SGLang's own placement: resolved on the forward stream after it waits for the schedule
# stream, with the factory form the README shows.
RelayMachineOnForward = overlap_machine(
    "reference_impl.relay_map:make_future_map", resolve_forward_inputs=RESOLVE,
    resolve_on="forward", pool_size=4, device="virtual", name="RelayMachineOnForward",
    settings=settings(max_examples=min(settings.default.max_examples, 100),
                      stateful_step_count=12, **QUIET))
TestRelayMachineOnForward = RelayMachineOnForward.TestCase


def _real_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


# A real GPU: values only (no race detector), with injected torch.cuda._sleep delays.
RelayMachineOnGPU = overlap_machine(MAP, resolve_forward_inputs=RESOLVE, pool_size=6, device="cuda",
                                    name="RelayMachineOnGPU",
                                    settings=settings(stateful_step_count=12, **QUIET))
TestRelayMachineOnRealGPU = pytest.mark.skipif(not _real_gpu(), reason="needs a real CUDA GPU")(
    RelayMachineOnGPU.TestCase)


def test_relay_machine_reaches_every_kind_of_step():
    machine = overlap_machine(MAP, resolve_forward_inputs=RESOLVE, pool_size=4, device="virtual",
                              name="RelayCoverage")
    run_state_machine_as_test(machine, settings=settings(
        max_examples=80, database=None, derandomize=True, stateful_step_count=12, **QUIET))
    wanted = {"relay: decode batch", "relay: prefill batch", "relay: mixed batch",
              "relay: idle batch", "relay: spec extras resolved",
              "relay: seq_len_cpu_ub (needs_cpu_seq_lens=False)", "step: spec on", "step: spec off",
              "slot reuse (freed and admitted again)"}
    missing = wanted - set(machine.reached)
    assert not missing, f"never reached: {sorted(missing)}; reached {dict(machine.reached)}"


# --- mutants of the relay ------------------------------------------------------------------

MAX_SHRUNK_RULES = 5
SHRINK = os.environ.get("STREAMORDER_MUTANT_SHRINK", "1") != "0"


@pytest.mark.parametrize("name", sorted(RELAY_MUTANTS))
def test_relay_mutant_is_caught_and_shrinks(name):
    mutant = RELAY_MUTANTS[name]
    machine = overlap_machine(mutant.factory, resolve_forward_inputs=mutant.resolve_forward_inputs,
                              pool_size=4, device="virtual", name=f"RelayMutant_{name}",
                              **mutant.needs)
    phases = [Phase.generate, Phase.shrink] if SHRINK else [Phase.generate]
    with pytest.raises((StreamRaceError, StaleValueError)) as info:
        run_state_machine_as_test(machine, settings=settings(
            max_examples=200, database=None, derandomize=True, report_multiple_bugs=False,
            phases=phases, stateful_step_count=10, **QUIET))
    run = machine.final_run
    assert run is not None
    print(f"{name}: {type(info.value).__name__}; shrunk to {run.rules} rules\n{run.program}\n"
          f"{str(info.value).splitlines()[0]}")
    if SHRINK:
        assert run.rules <= MAX_SHRUNK_RULES, f"{name} shrank only to {run.rules} rules:\n{run.program}"


# --- the batch protocol and the factory forms --------------------------------------------

def _run_once(**kwargs):
    """A few examples, not shrunk (a protocol error fails every example alike)."""
    machine = overlap_machine(kwargs.pop("future_map_cls", MAP), resolve_forward_inputs=RESOLVE,
                              pool_size=4, device="virtual", name="OneShot", **kwargs)
    run_state_machine_as_test(machine, settings=settings(
        max_examples=5, database=None, derandomize=True, stateful_step_count=4,
        phases=[Phase.generate], **QUIET))
    return machine


def test_batch_factory_missing_an_attribute_names_the_rule():
    def batch_without_mix(**fields):
        fields.pop("mix_running_indices")
        return SimpleNamespace(**fields)

    with pytest.raises(InvalidArgument, match=r"'mix_running_indices'.*token relay"):
        _run_once(batch_factory=batch_without_mix)


def test_future_map_without_stash_names_the_rule():
    def make_map_without_stash(pool_size, device, spec):
        from reference_impl.future_map import FutureMap

        return FutureMap(pool_size, device, spec)  # the seq-lens-only reference

    with pytest.raises(InvalidArgument, match=r"no attribute 'stash'.*token relay"):
        _run_once(future_map_cls=make_map_without_stash, spec=False)


def test_a_user_batch_class_is_used():
    seen = []

    def my_batch(**fields):
        seen.append(sorted(fields))
        return SimpleNamespace(**fields)

    _run_once(batch_factory=my_batch)
    assert seen and set(seen[0]) == {a for names in BATCH_PROTOCOL.values() for a in names}


def test_relay_arguments_need_resolve_forward_inputs():
    with pytest.raises(InvalidArgument, match="resolve_forward_inputs"):
        overlap_machine(MAP, batch_factory=SimpleNamespace, device="virtual")
    with pytest.raises(InvalidArgument, match="resolve_on"):
        overlap_machine(MAP, resolve_forward_inputs=RESOLVE, resolve_on="d2h", device="virtual")


def test_bound_without_host_copy_is_checked():
    """needs_cpu_seq_lens=False: a map that still copies to the host, or gives a bound
    below the truth, fails the invariant."""
    from reference_impl.relay_map import FutureMap, ReqToTokenPool

    class CopiesAnyway(FutureMap):
        def resolve_seq_lens_cpu(self, batch):
            super().resolve_seq_lens_cpu(batch)
            if batch.spec_info is not None:
                batch.seq_lens.cpu()  # BUG: the host copy the flag exists to skip

    class BoundTooLow(FutureMap):
        def resolve_seq_lens_cpu(self, batch):
            super().resolve_seq_lens_cpu(batch)
            if batch.seq_len_cpu_ub is not None:
                batch.seq_len_cpu_ub = min((r.kv_allocated_len for r in batch.reqs), default=0) - 1

    for cls, message in ((CopiesAnyway, "device-to-host"), (BoundTooLow, "below the true maximum")):
        machine = overlap_machine(cls, resolve_forward_inputs=RESOLVE, pool_size=4, device="virtual",
                                  spec=True, needs_cpu_seq_lens=False, name=f"Bound_{cls.__name__}")
        with pytest.raises(StaleValueError, match=message):
            run_state_machine_as_test(machine, settings=settings(
                max_examples=100, database=None, derandomize=True, report_multiple_bugs=False,
                phases=[Phase.generate], stateful_step_count=8, **QUIET))


def test_spec_mode_answers_what_sglang_asks_its_spec_algo():
    on, off = SpecMode(on=True, topk=2), SpecMode(on=False)
    assert on.is_some() and not on.is_none() and on.need_topk()
    assert off.is_none() and not off.need_topk() and not on.is_ngram() and not on.is_dflash()
    assert not SpecMode(on=True, topk=0).need_topk()


def test_the_lengths_machine_takes_a_factory_too():
    """Without the token relay, a factory `(pool_size, device, spec_algo) -> map` stands
    where a class with the reference's constructor did."""
    built = []

    def make(pool_size, device, spec_algo):
        from reference_impl.future_map import FutureMap

        built.append(pool_size)
        return FutureMap(pool_size, device, spec_algo)

    machine = overlap_machine(make, pool_size=4, device="virtual", name="LengthsFactory")
    run_state_machine_as_test(machine, settings=settings(
        max_examples=5, database=None, derandomize=True, stateful_step_count=4, **QUIET))
    assert built == [4] * 5
