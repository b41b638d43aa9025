"""Broken variants of relay_map's token relay, one changed line each (marked `# BUG:`).

  StashWithoutEvent   stash writes the slots but records no `stash_ready`: a step that
                      resolves on the schedule stream gathers while the forward's stash
                      may not have run (a stale token, or the never-written buffer).
  ResolveOnWrongStream
                      resolve_forward_inputs waits for the stash on the current stream
                      but gathers the relayed tokens on the map's private D2H stream,
                      which was ordered only with the current stream's earlier work.
  PoisonBeforeGather  debug poisoning writes -1 into the consumed slots *before*
                      gathering them: every relayed token resolves as the poison.

`RELAY_MUTANTS[name]` gives (factory, resolve_forward_inputs, needs): `needs` says the
spec mode that shows the bug (PoisonBeforeGather needs debug_poison).
"""

from __future__ import annotations

import dataclasses

import torch

from . import relay_map
from .relay_map import POISON, FutureMap, ReqToTokenPool


class StashWithoutEvent(FutureMap):
    def _record_stash(self) -> None:
        pass  # BUG: no self.stash_ready.record() after the writes


class ResolveOnWrongStream(FutureMap):
    """The current stream waits for the stash, but the gather is issued on the private
    D2H stream, ordered only with what the current stream had issued before that wait."""

    def wait_for_stash(self) -> None:
        if self.fwd_prepare_d2h_stream is not None:
            self.fwd_prepare_d2h_stream.wait_stream(self.mod.current_stream())
        super().wait_for_stash()

    def gather_tokens(self, indices: torch.Tensor) -> torch.Tensor:
        if self.fwd_prepare_d2h_stream is None:
            return super().gather_tokens(indices)
        # BUG: gathered on the D2H stream, which never waited for stash_ready
        with self.mod.stream(self.fwd_prepare_d2h_stream):
            tokens = self.output_tokens_buf[indices]
            self._consume(self.output_tokens_buf, indices)
        self.mod.current_stream().wait_stream(self.fwd_prepare_d2h_stream)
        return tokens


class PoisonBeforeGather(FutureMap):
    def gather_tokens(self, indices: torch.Tensor) -> torch.Tensor:
        if self.debug_poison:
            self.output_tokens_buf[indices] = POISON  # BUG: poisoned before the gather
        return self.output_tokens_buf[indices]


def _factory(cls):
    def make(pool_size, device, spec):
        return cls(device, spec, ReqToTokenPool.make(pool_size, device),
                   needs_cpu_seq_lens=spec.needs_cpu_seq_lens, debug_poison=spec.debug_poison)

    make.__name__ = make.__qualname__ = f"make_{cls.__name__}"
    return make


@dataclasses.dataclass(frozen=True)
class RelayMutant:
    name: str
    future_map_cls: type
    needs: dict  # overlap_machine keyword arguments the bug needs to show

    @property
    def factory(self):
        return _factory(self.future_map_cls)

    resolve_forward_inputs = staticmethod(relay_map.resolve_forward_inputs)


RELAY_MUTANTS = {m.name: m for m in (
    RelayMutant("stash_without_event", StashWithoutEvent, {}),
    RelayMutant("resolve_on_wrong_stream", ResolveOnWrongStream, {}),
    RelayMutant("poison_before_gather", PoisonBeforeGather, {"debug_poison": True}),
)}
