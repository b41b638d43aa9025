"""What the PyTorch-style suite shares, in the way test_cuda.py's helpers work.

TEST_CUDA is decided when this module is imported, as real suites do at module level: under
`pytest --streamorder` the virtual GPU must already exist then (issue 12, item 1).
"""

import functools

import torch

TEST_CUDA = torch.cuda.is_available()


@functools.lru_cache(maxsize=None)
def cycles_per_ms() -> float:
    """GPU clock cycles per millisecond, measured by timing `torch.cuda._sleep` with events
    (PyTorch's own tests calibrate their sleeps the same way)."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(1_000_000)
    end.record()
    end.synchronize()
    return 1_000_000 / start.elapsed_time(end)


def sleep_ms(ms: float) -> None:
    """Queue a kernel that keeps the current stream busy for about `ms` milliseconds."""
    torch.cuda._sleep(int(ms * cycles_per_ms()))
