"""Hypothesis strategies for overlap-scheduler code, and a ready-made state machine.

Everything here generates what SGLang's overlap scheduler feeds a `FutureMap`, and checks
that what `resolve_seq_lens_cpu` hands back equals the ground truth:

  request_pool_indices  a batch: unique request-pool slots (sizes 0, 1, small, up to the
                        whole pool; slot 0 is the padding row and never drawn)
  accept_lens           tokens each request of a batch accepts in one forward
  request_lengths       a new request's initial length
  dp_idle_steps         a DP-idle step (empty batch: the rank runs no forward)
  spec_modes            a program's speculative mode: "on", "off" or "mixed" (toggling)
  overlap_programs      a whole overlap program: a list of ops (`Admit`, `Free`, `Reuse`,
                        `Step`, `ToggleSpec`, `Sync`, `Delay`) valid by construction
  policies, schedules   a scheduling policy of the virtual device, and a schedule whose
                        every choice is drawn from Hypothesis (`HypothesisChooser`), so
                        that a failing schedule shrinks together with the program
  run_program           run a program on an `OverlapLoop` and check every value it resolves
  overlap_machine       a `RuleBasedStateMachine` over the overlap loop, for your own
                        FutureMap class or factory: `TestMine = overlap_machine(MyFutureMap).TestCase`;
                        with `resolve_forward_inputs=` it also fuzzes the output-token
                        relay of a FutureMap built as SGLang's (RelayMachine)

What is checked, after every step (`Step` = schedule a batch, resolve its lengths while
the previous forward still runs, then launch its forward, which publishes): the host
`seq_lens_cpu` and `seq_lens_sum` equal the oracle's; after every `Sync` (a full device
sync) the device `batch.seq_lens` of every step since the last sync and the FutureMap's
`new_seq_lens_buf` equal it too; and the virtual device reported no race. A wrong value
raises `StaleValueError`, a race `StreamRaceError` (both are AssertionErrors).

Devices. `device="virtual"` runs on the virtual CUDA device (a CPU-only machine is
enough; the schedule is drawn from Hypothesis and races are reported), `"cuda"` on a real
GPU (values only, with `Delay` ops injecting `torch.cuda._sleep` on a chosen stream to
make races manifest), `"cpu"` eagerly without streams (only checks the bookkeeping), and
`"auto"` takes `$STREAMORDER_DEVICE` if set, else `"cuda"` when a real GPU is present,
else `"virtual"`. Every example gets its own virtual device: it must not run inside one
that is already active (`pytest --streamorder` activates one per test *function*; mark
`@given` tests that use these helpers `@pytest.mark.no_streamorder`; the state machine's
TestCase is a unittest class, which the plugin does not wrap, and is marked anyway).

Importing this package imports hypothesis and pytest but not torch: the virtual device,
torch and the reference implementation load when an example first runs.

The package, one job per module (import everything from `pytest_streamorder.strategies`):

  values.py    batches, accepted tokens, request lengths, spec modes; argument checks
  chooser.py   policies, schedules: schedules drawn from Hypothesis (HypothesisChooser)
  programs.py  the ops of an overlap program, and overlap_programs
  devices.py   which device a program runs on (resolve_device)
  runner.py    OverlapRunner: run ops on an OverlapLoop, check values; run_program
  batches.py   the token relay's batch protocol: SpecMode, RelayBatch, DraftInput, Req,
               and the check that names the rule needing a missing attribute
  machine.py   OverlapMachine, RelayMachine, and overlap_machine for your own FutureMap
"""

from ..errors import StaleValueError
from .batches import (
    BATCH_PROTOCOL, DRAFT_PROTOCOL, MAP_PROTOCOL, DraftInput, RelayBatch, Req, SpecMode,
)
from .chooser import POLICIES, DrawnSchedule, HypothesisChooser, policies, schedules
from .devices import DEVICE_ENV, DEVICES, resolve_device
from .machine import (
    OverlapMachine, OverlapMachineWithDelays, RelayMachine, RelayMachineWithDelays, overlap_machine,
)
from .programs import (
    DELAY_STREAMS, Admit, Delay, Free, OverlapProgram, Reuse, Step, Sync, ToggleSpec,
    dp_idle_steps, overlap_programs,
)
from .runner import (
    DEFAULT_FUTURE_MAP, DEFAULT_LOOP, DEFAULT_RELAY_LOOP, OverlapRunner, RelayConfig, run_program,
)
from .values import SPEC_MODES, accept_lens, request_lengths, request_pool_indices, spec_modes

__all__ = [
    "Admit",
    "BATCH_PROTOCOL",
    "DEFAULT_RELAY_LOOP",
    "DRAFT_PROTOCOL",
    "DraftInput",
    "MAP_PROTOCOL",
    "RelayBatch",
    "RelayConfig",
    "RelayMachine",
    "RelayMachineWithDelays",
    "Req",
    "SpecMode",
    "DELAY_STREAMS",
    "DEVICE_ENV",
    "DEVICES",
    "DEFAULT_FUTURE_MAP",
    "DEFAULT_LOOP",
    "Delay",
    "DrawnSchedule",
    "Free",
    "HypothesisChooser",
    "OverlapMachine",
    "OverlapMachineWithDelays",
    "OverlapProgram",
    "OverlapRunner",
    "POLICIES",
    "Reuse",
    "SPEC_MODES",
    "StaleValueError",
    "Step",
    "Sync",
    "ToggleSpec",
    "accept_lens",
    "dp_idle_steps",
    "overlap_machine",
    "overlap_programs",
    "policies",
    "request_lengths",
    "request_pool_indices",
    "resolve_device",
    "run_program",
    "schedules",
    "spec_modes",
]
