"""A FutureMap-like relay, written for this suite: the forward stream publishes each
request's new sequence length into a device buffer (batch n), and the host, planning batch
n+1, resolves them without syncing the schedule stream: a private D2H stream waits only on
the publish event and copies the buffer into pinned memory.

On a platform without CUDA (decided at import, device_utils) it takes the plain `.cpu()`
path instead, as SGLang's FutureMap does.
"""

import torch

from .device_utils import is_cuda


class SeqLenRelay:
    def __init__(self, pool_size: int, device="cuda"):
        self.device = torch.device(device)
        self.seq_lens_buf = torch.zeros(pool_size, dtype=torch.int64, device=self.device)
        self.published = None  # the publish event, made on the first publish
        if is_cuda():
            self.seq_lens_host = torch.empty(pool_size, dtype=torch.int64, pin_memory=True)
            self.d2h_stream = torch.get_device_module(self.device).Stream()
        else:
            self.seq_lens_host = None
            self.d2h_stream = None
        if self.device.type == "cuda":
            # other streams write seq_lens_buf later: fence its zero-fill for them
            torch.cuda.current_stream(self.device).synchronize()

    def publish(self, slots: torch.Tensor, new_lens: torch.Tensor) -> None:
        """On the forward stream: write the new lengths and fence them with an event."""
        if slots.numel() == 0:
            return  # an idle (DP) step writes nothing, so it records nothing
        self.seq_lens_buf[slots] = new_lens
        self._record_published()

    def _record_published(self) -> None:
        if self.published is None:
            self.published = torch.cuda.Event()
        self.published.record()

    def resolve(self, slots: list) -> list:
        """On the host, between forward passes: the lengths of `slots`, as Python ints."""
        if self.published is not None:
            self.published.wait()  # the current stream gathers after the publish
        if self.d2h_stream is None or self.published is None:
            return self.seq_lens_buf.cpu()[slots].tolist()  # bootstrap / non-CUDA path
        return self._pull_to_host()[slots].tolist()

    def _pull_to_host(self) -> torch.Tensor:
        """The private-D2H path: gated on the publish event only, synced before the read."""
        self.d2h_stream.wait_event(self.published)
        with torch.cuda.stream(self.d2h_stream):
            self.seq_lens_host.copy_(self.seq_lens_buf, non_blocking=True)
        self.d2h_stream.synchronize()
        return self.seq_lens_host
