"""Reference FutureMap: how forward n hands each request's new sequence length to the
scheduler preparing batch n+1, across CUDA streams, without stalling the host.

The two methods that matter, `publish` and `resolve_seq_lens_cpu`, follow SGLang's
overlap scheduler (python/sglang/srt/managers/overlap_utils.py) line for line: same
names, same order of operations. The comments are ours.

The cast of streams (see overlap_loop.py for a driver):
  forward stream    runs forward n; `publish` writes `new_seq_lens_buf` there and
                    records `publish_ready` right after the write.
  schedule stream   prepares batch n+1 while forward n runs; `resolve_seq_lens_cpu`
                    runs there. It carries a WAR barrier on forward n (it must not rewrite
                    buffers forward n still reads), so a host sync on it would also wait
                    for that barrier.
  D2H stream        `fwd_prepare_d2h_stream`, private to this map: it waits only for
                    `publish_ready`, copies the buffer to pinned host memory, and is the
                    one stream the host syncs on.

Devices. Only torch and the standard library are imported; every device call goes
through `torch.get_device_module(device)`. A device "has streams" when its type is not
"cpu" (`device_has_streams`): torch.cpu offers Stream/Event stubs that order nothing,
so on cpu there is no private D2H stream and no pinned memory, and `resolve` takes the
plain `.cpu()` path (the seed's "bootstrap / non-CUDA" branch). On cpu `publish` still
creates `publish_ready` as the seed does, and gets torch.cpu's no-op Event stub.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

import torch


def device_has_streams(device: torch.device | str) -> bool:
    """Whether `device` runs work asynchronously on streams that need ordering.

    cpu is eager: each op has finished when it returns, and torch.cpu's Stream/Event are
    stubs. Every other device type (cuda, or a stand-in that reports type "cuda") is
    treated as having real streams, events and pinned host memory.
    """
    return torch.device(device).type != "cpu"


class SpecAlgorithm(enum.Enum):
    """Which speculative-decoding algorithm the server runs (SGLang's SpeculativeAlgorithm).

    Only `is_some()` matters here: with speculation, accepted lengths are produced on the
    device by verify, so the scheduler must read lengths back through the FutureMap and
    `publish` must record `publish_ready` to fence them.
    """

    NONE = "none"
    EAGLE = "eagle"

    def is_some(self) -> bool:
        return self is not SpecAlgorithm.NONE

    def is_none(self) -> bool:
        return self is SpecAlgorithm.NONE


@dataclass
class SpecInfo:
    """The draft input a spec batch carries (SGLang's EagleDraftInput), reduced to the one
    field resolve needs: the future-map slots to read, on the device. They equal the
    batch's req_pool_indices (see the FIXME in `resolve_seq_lens_cpu`)."""

    future_indices: Optional[torch.Tensor]


@dataclass
class ScheduleBatch:
    """The slice of SGLang's ScheduleBatch that publish/resolve touch.

    req_pool_indices      int64 on the device: the batch's request-pool slots.
    req_pool_indices_cpu  int64 on the host: the same slots.
    spec_info             SpecInfo for a spec batch; None when speculation is off for it.
    seq_lens              int64 on the device, one per request (set by resolve on spec).
    seq_lens_cpu          int64 on the host, one per request (set by resolve on spec).
    seq_lens_sum          int, sum of seq_lens_cpu.
    """

    req_pool_indices: torch.Tensor
    req_pool_indices_cpu: torch.Tensor
    spec_info: Optional[SpecInfo] = None
    seq_lens: Optional[torch.Tensor] = None
    seq_lens_cpu: Optional[torch.Tensor] = None
    seq_lens_sum: Optional[int] = None


class FutureMap:
    """Per-slot sequence lengths, written by the forward and read by the next schedule.

    Attributes:
      device                   torch.device
      spec_algo                SpecAlgorithm (anything with `is_some()`)
      new_seq_lens_buf         int64 on device, one entry per request-pool slot; slot 0
                               is the padding row (padded batches index it harmlessly).
      new_seq_lens_cpu_pinned  int64 host mirror of the whole buffer; pinned where the
                               device has streams, so a non_blocking D2H can target it.
      fwd_prepare_d2h_stream   private D2H stream; None where the device has no streams.
      publish_ready            device Event; None until the first spec publish.

    Construction zero-fills `new_seq_lens_buf` on the stream current at that time (the
    default stream, usually). That is device work like any other: a user must make the
    streams that touch the buffer wait for it (OverlapLoop does, in `_order_after_init`).
    """

    def __init__(self, pool_size: int, device: torch.device | str, spec_algo: SpecAlgorithm):
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self.device = torch.device(device)
        self.spec_algo = spec_algo
        streams = device_has_streams(self.device)
        # Deterministic contents (zeros) rather than torch.empty, so an unwritten slot
        # reads as 0 everywhere instead of as whatever the allocator handed out.
        self.new_seq_lens_buf = torch.zeros(pool_size, dtype=torch.int64, device=self.device)
        self.new_seq_lens_cpu_pinned = torch.zeros(pool_size, dtype=torch.int64, pin_memory=streams)
        self.fwd_prepare_d2h_stream = (
            torch.get_device_module(self.device).Stream() if streams else None
        )
        self.publish_ready = None  # created lazily by the first spec publish

    def resolve_seq_lens_cpu(self, batch: ScheduleBatch) -> None:
        """On the schedule stream: fill batch.seq_lens (device) and batch.seq_lens_cpu /
        seq_lens_sum (host) from what the previous forward published."""
        # Some attention backends need the lengths on the host to prepare kernel launches.
        # The copy runs on a private stream: syncing the schedule stream instead would make
        # the host wait for that stream's WAR barrier, i.e. for all of forward n, and the
        # scheduler would stop running ahead of the GPU.
        fi = batch.spec_info.future_indices if batch.spec_info is not None else None
        if fi is None:
            return  # not a spec batch: nothing was deferred to the device
        # Device-side gather below reads what forward n published: order this (schedule)
        # stream after the publish, not after the whole forward.
        if self.publish_ready is not None:
            self.publish_ready.wait()
        batch.seq_lens = self.new_seq_lens_buf[fi]

        if self.fwd_prepare_d2h_stream is None or self.publish_ready is None:
            # No private stream (cpu) or nothing published yet: a plain blocking copy on
            # the current stream is correct, and cheap because nothing is in flight.
            batch.seq_lens_cpu = batch.seq_lens.cpu()
            batch.seq_lens_sum = int(batch.seq_lens_cpu.sum())
            return

        # The private stream waits for the publish only; the copy into pinned memory is
        # asynchronous, so the host must sync the private stream before reading it.
        self.fwd_prepare_d2h_stream.wait_event(self.publish_ready)
        with torch.get_device_module(self.device).stream(self.fwd_prepare_d2h_stream):
            self.new_seq_lens_cpu_pinned.copy_(self.new_seq_lens_buf, non_blocking=True)
        self.fwd_prepare_d2h_stream.synchronize()

        # The whole buffer was copied; pick the batch's slots on the host.
        # FIXME (as in SGLang): fi == batch.req_pool_indices; unify the two.
        batch.seq_lens_cpu = self.new_seq_lens_cpu_pinned[batch.req_pool_indices_cpu]
        batch.seq_lens_sum = int(batch.seq_lens_cpu.sum())

    def publish(self, future_indices: torch.Tensor, new_seq_lens: torch.Tensor) -> None:
        """On the stream that produced `new_seq_lens` (forward): store them per slot and,
        with speculation, record `publish_ready` right after the write."""
        indices = future_indices
        if indices.shape[0] == 0:
            # DP idle: nothing written, so the previous capture of publish_ready still
            # fences every write to the buffer; re-recording is unnecessary.
            return
        self.new_seq_lens_buf[indices] = new_seq_lens.to(self.new_seq_lens_buf.dtype)
        # Only spec needs the event: it gates resolve's gather and the private D2H.
        # Recorded on the current stream, after the write, so work that follows on this
        # stream (draft extend) is not waited for.
        if self.spec_algo.is_some():
            if self.publish_ready is None:
                self.publish_ready = torch.get_device_module(self.device).Event()
            self.publish_ready.record()
