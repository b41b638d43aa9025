"""Issue 7 (a): how long the host blocks in `resolve_seq_lens_cpu`, the reference (private
D2H stream gated on publish_ready) against a variant that syncs the schedule stream.

One overlap step, as the host issues it. Forward n runs on the forward stream: "verify"
(PRE_PUBLISH_MS of `torch.cuda._sleep`), `publish` (write new_seq_lens_buf, record
publish_ready), then "draft extend" (POST_PUBLISH_MS, about 1.8 ms as measured on an
H100), then record fwd_done. Meanwhile the host prepares batch n+1 on the schedule stream,
which carries the WAR barrier on forward n (it waits fwd_done: SGLang's barrier), and calls
`resolve_seq_lens_cpu`. The reference syncs only its private D2H stream, so the host waits
for the publish; the variant copies on the schedule stream and syncs it, so the host waits
behind the barrier for all of forward n. Both are correct; only the waiting differs.

Runs unchanged on a real GPU and on the virtual device (where `_sleep` cycles are virtual
time, so the model predicts the blocked times).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from pytest_streamorder.sim.device import SLEEP_CYCLES_PER_NS
from reference_impl import FutureMap, ScheduleBatch, SpecAlgorithm, SpecInfo

# forward n before publish ("verify") and after it ("draft extend"); environment variables
# STREAMORDER_BENCH_PRE_MS / _POST_MS change them.
PRE_PUBLISH_MS = float(os.environ.get("STREAMORDER_BENCH_PRE_MS", 0.3))
POST_PUBLISH_MS = float(os.environ.get("STREAMORDER_BENCH_POST_MS", 1.8))
POOL, BATCH = 64, 16
# Measured on an H100 with ~1.8 ms of compute after publish (issue 7), in ms.
H100_REFERENCE_MS = {"private_d2h": 0.34, "sync_schedule": 2.14}


class SyncScheduleStreamFutureMap(FutureMap):
    """resolve_seq_lens_cpu without the private stream: the D2H copy goes on the current
    (schedule) stream and the host syncs that stream. Correct, but the sync also waits for
    everything the schedule stream waits for, the WAR barrier on forward n included."""

    def resolve_seq_lens_cpu(self, batch: ScheduleBatch) -> None:
        fi = batch.spec_info.future_indices if batch.spec_info is not None else None
        if fi is None:
            return
        if self.publish_ready is not None:
            self.publish_ready.wait()
        batch.seq_lens = self.new_seq_lens_buf[fi]
        self.new_seq_lens_cpu_pinned.copy_(self.new_seq_lens_buf, non_blocking=True)
        torch.get_device_module(self.device).current_stream().synchronize()
        batch.seq_lens_cpu = self.new_seq_lens_cpu_pinned[batch.req_pool_indices_cpu]
        batch.seq_lens_sum = int(batch.seq_lens_cpu.sum())


VARIANTS = {"private_d2h": FutureMap, "sync_schedule": SyncScheduleStreamFutureMap}


def sleep_cycles(ms: float) -> int:
    """`torch.cuda._sleep` cycles for `ms` at the SM clock the virtual device assumes."""
    return int(ms * 1e6 * SLEEP_CYCLES_PER_NS)


@dataclass
class State:
    future_map: FutureMap
    forward: torch.cuda.Stream
    schedule: torch.cuda.Stream
    fwd_done: torch.cuda.Event
    indices: torch.Tensor  # device
    indices_cpu: torch.Tensor
    new_lens: torch.Tensor  # device: what forward n publishes

    @property
    def expected(self) -> list[int]:
        return [10 + i for i in range(BATCH)]


def make_state(variant: str, device: str = "cuda"):
    """pedantic-style setup: ((state,), {})."""
    fm = VARIANTS[variant](POOL, device, SpecAlgorithm.EAGLE)
    forward, schedule = torch.cuda.Stream(), torch.cuda.Stream()
    indices_cpu = torch.arange(1, BATCH + 1, dtype=torch.int64)
    state = State(fm, forward, schedule, torch.cuda.Event(), indices_cpu.to(device),
                  indices_cpu, torch.arange(10, 10 + BATCH, dtype=torch.int64, device=device))
    init = torch.cuda.current_stream()
    for s in (forward, schedule, fm.fwd_prepare_d2h_stream):
        s.wait_stream(init)
    return (state,), {}


def overlap_step(state: State) -> ScheduleBatch:
    """Launch forward n, then resolve batch n+1's lengths on the schedule stream."""
    with torch.cuda.stream(state.forward):
        torch.cuda._sleep(sleep_cycles(PRE_PUBLISH_MS))  # verify
        state.future_map.publish(state.indices, state.new_lens)
        torch.cuda._sleep(sleep_cycles(POST_PUBLISH_MS))  # draft extend
        state.fwd_done.record()
    with torch.cuda.stream(state.schedule):
        state.schedule.wait_event(state.fwd_done)  # WAR barrier on forward n
        batch = ScheduleBatch(req_pool_indices=state.indices,
                              req_pool_indices_cpu=state.indices_cpu,
                              spec_info=SpecInfo(future_indices=state.indices))
        state.future_map.resolve_seq_lens_cpu(batch)
    return batch
