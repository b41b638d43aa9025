"""Platform check in SGLang's way (`sglang.srt.utils.is_cuda()`): decided once, when this
module is imported. Under `pytest --streamorder` the virtual GPU must already exist then, or
every helper below silently takes its CPU fallback (issue 12); test_platform_path.py fails
loudly when that happens.
"""

import torch

_is_cuda = torch.cuda.is_available() and torch.version.cuda is not None

CODE_PATH = "cuda" if _is_cuda else "cpu-fallback"


def is_cuda() -> bool:
    return _is_cuda


def delay_current_stream(cycles: int = 20_000_000) -> None:
    """Keep the current stream busy for a while (~10 ms on a datacenter GPU), so the work
    queued after this lands late, as a slow forward pass would."""
    torch.cuda._sleep(cycles)
