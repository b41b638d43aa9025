"""The batch protocol of the token-relay machine: what a FutureMap's methods may read
and write on a batch, the objects the machine builds by default, and the check that
names the rule needing a missing attribute.

SGLang's FutureMap methods read a `ScheduleBatch` and an `EagleDraftInput`. The machine
builds stand-ins with every attribute those methods touch (`RelayBatch`, `DraftInput`,
`Req`), or calls your `batch_factory(**fields)` with the same keyword fields and checks
the object it returns: a missing attribute is an InvalidArgument naming the rule that
needs it. Torch-free: the tensors are made by the loop that fills these objects.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from hypothesis.errors import InvalidArgument


@dataclasses.dataclass(frozen=True)
class SpecMode:
    """How one example runs; a factory builds the map from it. It also answers what
    SGLang's FutureMap asks its `spec_algo` (`is_none`, `is_some`, `need_topk`,
    `is_ngram`, `is_dflash`), so a map that only asks those can take it as is.

    on                  speculative decoding (spec v2 with overlap): decode batches
                        carry a draft input and resolve through the map
    needs_cpu_seq_lens  False: resolve_seq_lens_cpu must skip the host copy and give
                        `seq_len_cpu_ub` instead
    debug_poison        the map poisons consumed token slots (SGLang's CI mode)
    topk, hidden_size   shapes of the spec extras (topk 0: no top-k relay; hidden_size
                        0: no hidden states)
    """

    on: bool = False
    needs_cpu_seq_lens: bool = True
    debug_poison: bool = False
    topk: int = 2
    hidden_size: int = 3

    def is_some(self) -> bool:
        return self.on

    def is_none(self) -> bool:
        return not self.on

    def need_topk(self) -> bool:
        return self.on and self.topk > 0

    def is_ngram(self) -> bool:
        return False

    def is_dflash(self) -> bool:
        return False


@dataclasses.dataclass
class Req:
    """A request as resolve_seq_lens_cpu sees it: `kv_allocated_len` is the KV the
    scheduler reserved, an upper bound of the request's true length."""

    slot: int
    kv_allocated_len: int


@dataclasses.dataclass
class DraftInput:
    """The spec batch's draft input (SGLang's EagleDraftInput): `future_indices` to
    resolve from, and the extras a forward stashes and the next step gathers."""

    future_indices: Any = None
    verified_id: Any = None
    bonus_tokens: Any = None
    topk_p: Any = None
    topk_index: Any = None
    hidden_states: Any = None


@dataclasses.dataclass
class RelayBatch:
    """The slice of SGLang's ScheduleBatch a FutureMap touches (see BATCH_PROTOCOL)."""

    device: Any
    reqs: list
    req_pool_indices: Any
    req_pool_indices_cpu: Any
    enable_overlap: bool = True
    is_spec_v2: bool = False
    spec_algorithm: Any = None
    spec_info: Optional[DraftInput] = None
    prefill_input_ids_cpu: Any = None
    mix_running_indices: Any = None
    input_ids: Any = None
    seq_lens: Any = None
    seq_lens_cpu: Any = None
    seq_lens_sum: Optional[int] = None
    seq_len_cpu_ub: Optional[int] = None


# Rule -> the batch attributes it needs (read or written by SGLang's methods, or read by
# the machine's invariants). A batch_factory's object must have every one.
BATCH_PROTOCOL: dict[str, tuple[str, ...]] = {
    "every step (the machine builds the batch)": (
        "device", "reqs", "req_pool_indices", "req_pool_indices_cpu", "enable_overlap",
        "is_spec_v2", "spec_algorithm", "spec_info"),
    "token relay (resolve_forward_inputs: decode, prefill, mixed)": (
        "input_ids", "prefill_input_ids_cpu", "mix_running_indices"),
    "sequence lengths (resolve_seq_lens_cpu, spec on)": (
        "seq_lens", "seq_lens_cpu", "seq_lens_sum", "seq_len_cpu_ub"),
}
DRAFT_PROTOCOL: tuple[str, ...] = (
    "future_indices", "verified_id", "bonus_tokens", "topk_p", "topk_index", "hidden_states")
REQ_PROTOCOL: tuple[str, ...] = ("kv_allocated_len",)

# Rule -> what the FutureMap (or the resolve function) must offer.
MAP_PROTOCOL: dict[str, tuple[str, ...]] = {
    "every step (publish the new lengths on the forward stream)": ("publish",),
    "token relay (stash on the forward stream, after publish)": ("stash",),
    "sequence lengths (resolve_seq_lens_cpu, spec on)": ("resolve_seq_lens_cpu",),
}


def check_protocol(obj: Any, protocol: dict[str, tuple[str, ...]], what: str) -> None:
    """InvalidArgument naming the first rule whose attribute `obj` lacks."""
    for rule, names in protocol.items():
        for name in names:
            if not hasattr(obj, name):
                raise InvalidArgument(
                    f"{what} {type(obj).__qualname__} has no attribute {name!r}, which the "
                    f"rule '{rule}' needs (all it needs: {', '.join(names)})")


def build_batch(factory: Optional[Callable], fields: dict) -> Any:
    """A batch from `factory(**fields)` (default RelayBatch), checked against the protocol."""
    batch = (factory or RelayBatch)(**fields)
    check_protocol(batch, BATCH_PROTOCOL, "the batch_factory's batch")
    return batch


def build_draft(factory: Optional[Callable], fields: dict) -> Any:
    draft = (factory or DraftInput)(**fields)
    check_protocol(draft, {"spec decode (the draft input a forward stashes)": DRAFT_PROTOCOL},
                   "the draft_factory's draft input")
    return draft
