"""Broken variants of the reference, one per bug class of DESIGN.md.

Each mutant is a subclass of FutureMap or OverlapLoop that overrides exactly one method
and changes one thing in it (lines marked `# BUG:`). On cpu (eager) every mutant still
computes the right values: the bugs need real asynchrony to show. On a GPU they show
only when a stream runs late; on the virtual device the adversarial scheduler makes them
return stale values and the race detector names the missing edge.

`MUTANTS[name].make_loop(pool_size, device=...)` builds the broken loop;
`BUG_CLASSES` maps each bug class (DESIGN.md's wording) to the mutant that embodies it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .future_map import FutureMap, ScheduleBatch
from .overlap_loop import ROW_ACCEPT, ROW_INDICES, OverlapLoop


@dataclass(frozen=True)
class Mutant:
    name: str
    future_map_cls: type[FutureMap]
    loop_cls: type[OverlapLoop]
    drops: str  # the ordering step that is missing or misplaced
    mirrors: str  # the real bug it reproduces

    def make_loop(self, pool_size: int, device="cpu", **kwargs) -> OverlapLoop:
        return self.loop_cls(pool_size, device=device, future_map_cls=self.future_map_cls, **kwargs)


# ------------------------------------------------------------- FutureMap mutants
# These copy the seed's method and change one line, so the diff is the bug.


class D2HNotGated(FutureMap):
    """The private D2H stream copies new_seq_lens_buf without waiting for publish_ready:
    the copy can run before (or during) forward n's publish and the host reads old
    lengths. Drops `fwd_prepare_d2h_stream.wait_event(publish_ready)`."""

    def resolve_seq_lens_cpu(self, batch: ScheduleBatch) -> None:
        fi = batch.spec_info.future_indices if batch.spec_info is not None else None
        if fi is None:
            return
        if self.publish_ready is not None:
            self.publish_ready.wait()
        batch.seq_lens = self.new_seq_lens_buf[fi]
        if self.fwd_prepare_d2h_stream is None or self.publish_ready is None:
            batch.seq_lens_cpu = batch.seq_lens.cpu()
            batch.seq_lens_sum = int(batch.seq_lens_cpu.sum())
            return
        # BUG: no self.fwd_prepare_d2h_stream.wait_event(self.publish_ready)
        with torch.get_device_module(self.device).stream(self.fwd_prepare_d2h_stream):
            self.new_seq_lens_cpu_pinned.copy_(self.new_seq_lens_buf, non_blocking=True)
        self.fwd_prepare_d2h_stream.synchronize()
        batch.seq_lens_cpu = self.new_seq_lens_cpu_pinned[batch.req_pool_indices_cpu]
        batch.seq_lens_sum = int(batch.seq_lens_cpu.sum())


class PinnedReadBeforeSync(FutureMap):
    """The host reads the pinned buffer right after issuing the non_blocking D2H, and
    syncs the D2H stream only afterwards: the copy may not have landed yet. Misplaces
    `fwd_prepare_d2h_stream.synchronize()` (host read before the sync that covers it)."""

    def resolve_seq_lens_cpu(self, batch: ScheduleBatch) -> None:
        fi = batch.spec_info.future_indices if batch.spec_info is not None else None
        if fi is None:
            return
        if self.publish_ready is not None:
            self.publish_ready.wait()
        batch.seq_lens = self.new_seq_lens_buf[fi]
        if self.fwd_prepare_d2h_stream is None or self.publish_ready is None:
            batch.seq_lens_cpu = batch.seq_lens.cpu()
            batch.seq_lens_sum = int(batch.seq_lens_cpu.sum())
            return
        self.fwd_prepare_d2h_stream.wait_event(self.publish_ready)
        with torch.get_device_module(self.device).stream(self.fwd_prepare_d2h_stream):
            self.new_seq_lens_cpu_pinned.copy_(self.new_seq_lens_buf, non_blocking=True)
        batch.seq_lens_cpu = self.new_seq_lens_cpu_pinned[batch.req_pool_indices_cpu]
        batch.seq_lens_sum = int(batch.seq_lens_cpu.sum())
        self.fwd_prepare_d2h_stream.synchronize()  # BUG: after the host read, not before


class GatherWithoutPublishWait(FutureMap):
    """The schedule stream gathers new_seq_lens_buf[fi] without waiting for
    publish_ready: batch.seq_lens (device) can be read before forward n's publish, and
    the next forward builds on the stale value. seq_lens_cpu stays right (its D2H is
    gated). Drops `publish_ready.wait()` on the schedule stream."""

    def resolve_seq_lens_cpu(self, batch: ScheduleBatch) -> None:
        fi = batch.spec_info.future_indices if batch.spec_info is not None else None
        if fi is None:
            return
        # BUG: no self.publish_ready.wait() before the gather
        batch.seq_lens = self.new_seq_lens_buf[fi]
        if self.fwd_prepare_d2h_stream is None or self.publish_ready is None:
            batch.seq_lens_cpu = batch.seq_lens.cpu()
            batch.seq_lens_sum = int(batch.seq_lens_cpu.sum())
            return
        self.fwd_prepare_d2h_stream.wait_event(self.publish_ready)
        with torch.get_device_module(self.device).stream(self.fwd_prepare_d2h_stream):
            self.new_seq_lens_cpu_pinned.copy_(self.new_seq_lens_buf, non_blocking=True)
        self.fwd_prepare_d2h_stream.synchronize()
        batch.seq_lens_cpu = self.new_seq_lens_cpu_pinned[batch.req_pool_indices_cpu]
        batch.seq_lens_sum = int(batch.seq_lens_cpu.sum())


class RecordBeforeWrite(FutureMap):
    """publish records publish_ready before the write it should fence: every waiter
    (gather, D2H) is ordered before the write instead of after it. Misplaces
    `publish_ready.record()`."""

    def publish(self, future_indices: torch.Tensor, new_seq_lens: torch.Tensor) -> None:
        indices = future_indices
        if indices.shape[0] == 0:
            return
        if self.spec_algo.is_some():  # BUG: record moved above the write
            if self.publish_ready is None:
                self.publish_ready = torch.get_device_module(self.device).Event()
            self.publish_ready.record()
        self.new_seq_lens_buf[indices] = new_seq_lens.to(self.new_seq_lens_buf.dtype)


# ----------------------------------------------------------------- loop mutants


class ReRecordDropsFence(OverlapLoop):
    """Seeding new requests calls publish on the schedule stream, re-recording
    publish_ready there without first waiting its forward-stream capture. The event now
    fences only the schedule stream, which is ahead of forward n's publish: resolve's
    gather and D2H read stale lengths, and the seed can be overwritten by forward n's
    publish to a reused slot. Drops the chain wait `_chain_publish_fence`."""

    def _chain_publish_fence(self) -> None:
        pass  # BUG: publish re-records publish_ready on another stream unchained


class WaitBeforeRecord(OverlapLoop):
    """The forward stream waits on inputs_ready before the schedule stream records it
    for this step, so the wait binds to the previous step's capture (or to nothing on
    the first step): forward n+1 can read input buffers and batch.seq_lens not written
    yet. Misorders `forward_stream.wait_event(inputs_ready)` before its record."""

    def _hand_off_inputs(self) -> None:
        if not self.has_streams:
            return
        self.forward_stream.wait_event(self.inputs_ready)  # BUG: waits before the record
        self.inputs_ready.record(self.schedule_stream)


class MissingWarBarrier(OverlapLoop):
    """The schedule stream rewrites the persistent input buffer (req_pool_indices,
    accept lens) while forward n may still be reading it: forward n publishes lengths
    for batch n+1's slots. Drops the WAR barrier `schedule_stream.wait_event(read_done)`."""

    def _war_barrier(self) -> None:
        pass  # BUG: no wait for forward n to finish reading the inputs


class NoRecordStream(OverlapLoop):
    """batch.seq_lens is allocated on the schedule stream, read by the forward stream,
    and freed by the host without record_stream: the caching allocator gives its block to
    the schedule stream's next allocation (next step's gather or H2D), which overwrites
    it before the forward read it. Drops `batch.seq_lens.record_stream(forward_stream)`."""

    def _protect_temporaries(self, batch: ScheduleBatch) -> None:
        pass  # BUG: freed while another stream still uses it


class StagingOverwritten(OverlapLoop):
    """The host rewrites the pinned staging buffer for step n+1 without waiting for step
    n's non_blocking H2D copies, which read it when they run: forward n gets batch n+1's
    inputs. Drops the host sync `staging_free.synchronize()` before reuse."""

    def _reserve_staging(self) -> None:
        pass  # BUG: host writes pinned memory an H2D copy has not consumed yet


class StaleEventOnSpecOff(OverlapLoop):
    """Spec-off forwards write new_seq_lens_buf directly instead of through publish
    ("no spec resolve reads this batch, so no event needed"): publish_ready keeps an
    older step's capture, and the next spec step's gather and D2H wait on that stale
    event while the spec-off forward's write is still in flight. Drops the re-record of
    publish_ready on spec-off steps."""

    def _publish(self, indices: torch.Tensor, new_seq_lens: torch.Tensor, spec: bool) -> None:
        if spec:
            self.future_map.publish(indices, new_seq_lens)
        elif indices.shape[0] > 0:  # BUG: writes without re-recording publish_ready
            self.future_map.new_seq_lens_buf[indices] = new_seq_lens


class InitRace(OverlapLoop):
    """The schedule, forward and D2H streams never wait for the default-stream zero-fills
    done at construction (new_seq_lens_buf, fwd_inputs): a late zero-fill can land after
    the first seeds or inputs and wipe them. Drops `side_stream.wait_stream(default)`."""

    def _order_after_init(self) -> None:
        pass  # BUG: side streams unordered with the default stream's init


class OffsetViewWrite(OverlapLoop):
    """The accept-lens row of the input buffer is uploaded before the WAR barrier, as if
    the forward read only the indices row; the forward reads both rows through one 2-D
    view, which overlaps. A data_ptr-keyed checker misses this (the row-1 view starts at
    a different address). Misplaces the row-1 H2D before `_war_barrier`."""

    def _write_fwd_inputs(self, n: int) -> None:
        self._h2d(self.fwd_inputs[ROW_ACCEPT, :n], self.staging[ROW_ACCEPT, :n])  # BUG: first
        self._war_barrier()
        self._h2d(self.fwd_inputs[ROW_INDICES, :n], self.staging[ROW_INDICES, :n])


REFERENCE = Mutant("reference", FutureMap, OverlapLoop, drops="nothing", mirrors="the correct code")

MUTANTS: dict[str, Mutant] = {
    m.name: m
    for m in [
        Mutant("d2h_not_gated", D2HNotGated, OverlapLoop,
               drops="fwd_prepare_d2h_stream.wait_event(publish_ready) before the D2H copy",
               mirrors="D2H not gated on the publish event (SGLang FutureMap seq_lens pull)"),
        Mutant("pinned_read_before_sync", PinnedReadBeforeSync, OverlapLoop,
               drops="fwd_prepare_d2h_stream.synchronize() before the host reads pinned memory",
               mirrors="host reads a non_blocking D2H destination before syncing (missed by CSAN)"),
        Mutant("gather_without_publish_wait", GatherWithoutPublishWait, OverlapLoop,
               drops="publish_ready.wait() on the schedule stream before the gather",
               mirrors="schedule-stream gather without waiting the publish event"),
        Mutant("record_before_write", RecordBeforeWrite, OverlapLoop,
               drops="publish_ready.record() after the index_put it fences (moved before)",
               mirrors="event recorded before the write it should fence"),
        Mutant("rerecord_drops_fence", FutureMap, ReRecordDropsFence,
               drops="schedule_stream.wait_event(publish_ready) before re-recording it",
               mirrors="SGLang #30435: prebuilt seeding re-records publish_ready on the "
                       "schedule stream and drops the forward fence"),
        Mutant("wait_before_record", FutureMap, WaitBeforeRecord,
               drops="inputs_ready.record(schedule) before forward_stream.wait_event(inputs_ready)",
               mirrors="wait issued before the record it meant to wait on"),
        Mutant("missing_war_barrier", FutureMap, MissingWarBarrier,
               drops="schedule_stream.wait_event(read_done) before rewriting forward inputs",
               mirrors="SGLang #26380, #18744: schedule stream rewrites a slot forward n still reads"),
        Mutant("no_record_stream", FutureMap, NoRecordStream,
               drops="batch.seq_lens.record_stream(forward_stream) before the host frees it",
               mirrors="SGLang #34076: temporary freed without record_stream and reused"),
        Mutant("staging_overwritten", FutureMap, StagingOverwritten,
               drops="staging_free.synchronize() before the host rewrites pinned staging",
               mirrors="vLLM #24527: pinned staging buffer overwritten before its H2D copy ran"),
        Mutant("stale_event_on_spec_off", FutureMap, StaleEventOnSpecOff,
               drops="publish_ready.record() after spec-off forwards' writes",
               mirrors="vLLM #34866: stale event used on spec-off or DP-idle steps"),
        Mutant("init_race", FutureMap, InitRace,
               drops="side_stream.wait_stream(default stream) after construction",
               mirrors="default-stream init raced by a side stream"),
        Mutant("offset_view_write", FutureMap, OffsetViewWrite,
               drops="the WAR barrier before the write to row 1 (an offset view) of fwd_inputs",
               mirrors="offset-view writes (a race CSAN misses: it keys on data_ptr)"),
    ]
}

# DESIGN.md's bug classes that apply to publish/resolve and the overlap loop.
BUG_CLASSES: dict[str, str] = {
    "D2H not gated on the publish event": "d2h_not_gated",
    "host reads the pinned buffer before the D2H stream is synced": "pinned_read_before_sync",
    "schedule-stream gather without waiting the publish event": "gather_without_publish_wait",
    "event recorded before the write it should fence": "record_before_write",
    "event re-recorded on another stream drops the first fence": "rerecord_drops_fence",
    "wait issued before the record it meant to wait on": "wait_before_record",
    "schedule stream rewrites a slot forward n still reads": "missing_war_barrier",
    "temporary freed without record_stream and reused": "no_record_stream",
    "pinned staging buffer overwritten before its H2D copy ran": "staging_overwritten",
    "stale event used on spec-off or DP-idle steps": "stale_event_on_spec_off",
    "default-stream init raced by a side stream": "init_race",
    "offset-view writes": "offset_view_write",
}
