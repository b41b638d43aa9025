"""Model code on the real-GPU backend (issue 14): the tiny decoder's overlapped decode
loop and its broken twins, a compiled helper (run eagerly so that its ops reach the
dispatch mode: Inductor's kernels would launch unseen) and a torch.library custom op
(its schema gives its writes), each with a broken twin. Skipped without CUDA.

Written without a GPU at hand: the lead runs it on the H200 after merging."""

from __future__ import annotations

import pytest
import torch

from tests import tiny_decoder as td

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a real CUDA device"),
]


def _backend(delays: bool = False):
    from pytest_streamorder.gpu import cuda_backend

    delay = dict(delay_probability=1.0, fire_probability=1.0, delay_ms=0.3) if delays else \
        dict(delay_probability=0)
    return cuda_backend(seed=0, raise_on_race=False, **delay)


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return td.TinyDecoder().state_dict()


@pytest.mark.parametrize("serving", [False, True])  # True: CUDA graph, compiled, custom op
@pytest.mark.parametrize("delays", [False, True])
def test_the_overlapped_decode_loop_is_silent_and_decodes_the_cpu_tokens(weights, delays,
                                                                         serving):
    cpu = td.TinyDecoder()
    cpu.load_state_dict(weights)
    with torch.no_grad():
        expected, _ = td.DecodeLoop(cpu, [3, 17, 5], "cpu").run(4)
    model = td.TinyDecoder().cuda()
    model.load_state_dict(weights)
    with _backend(delays) as be, torch.no_grad():
        tokens, _ = td.DecodeLoop(model, [3, 17, 5], "cuda", serving=serving).run(4)
    assert be.races == [], "\n\n".join(str(r) for r in be.races)
    assert tokens == expected  # sdpa picks another kernel on the GPU: argmax still agrees


@pytest.mark.parametrize("serving", [False, True])
@pytest.mark.parametrize("edge", ["wait_inputs", "wait_forward"])
def test_each_missing_edge_of_the_decode_loop_is_a_race(weights, edge, serving):
    model = td.TinyDecoder().cuda()
    model.load_state_dict(weights)
    with _backend() as be, torch.no_grad():
        td.DecodeLoop(model, [3, 17, 5], "cuda", serving=serving, **{edge: False}).run(4)
    assert be.races, f"dropping {edge} was not reported"
    # The missing edge is named by the streams of the pair: the forward stream reading
    # inputs the schedule stream wrote (wait_inputs), or the schedule stream reading or
    # rewriting what the forward stream still uses (wait_forward: the RAW on next_tokens
    # or the WAR on input_ids, whichever the model meets first; one missing edge is
    # reported once).
    earlier, later = (("schedule_stream", "forward_stream") if edge == "wait_inputs"
                      else ("forward_stream", "schedule_stream"))
    assert any(r.earlier.agent.name == earlier and r.later.agent.name == later
               for r in be.races), "\n\n".join(str(r) for r in be.races)


@torch.compile
def _scale_and_shift(x, out):
    out.copy_(x * 2 + 1)


@pytest.mark.parametrize("wait", [False, True])
def test_a_compiled_helper_on_a_side_stream(wait):
    x = torch.arange(6.0, device="cuda")
    out = torch.zeros(6, device="cuda")
    torch.cuda.synchronize()
    with _backend() as be:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            _scale_and_shift(x, out)
        if wait:
            torch.cuda.current_stream().wait_stream(side)
        total = out.sum().item()
    if wait:
        assert be.races == [] and total == 36.0
    else:
        assert len(be.races) == 1 and "aten.copy_" in str(be.races[0])
    import importlib  # (a plain `import torch._dynamo` here would make torch a local)

    assert importlib.import_module("torch._dynamo").config.disable is False  # put back


@torch.library.custom_op("streamorder_gpu_test::scale_into", mutates_args=("out",))
def _scale_into(out: torch.Tensor, x: torch.Tensor, alpha: float) -> None:
    out.copy_(x * alpha)


@pytest.mark.parametrize("wait", [False, True])
def test_a_custom_op_on_a_side_stream(wait):
    x = torch.arange(4.0, device="cuda")
    out = torch.zeros(4, device="cuda")
    torch.cuda.synchronize()
    with _backend() as be:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            _scale_into(out, x, 2.0)
        if wait:
            torch.cuda.current_stream().wait_stream(side)
        total = out.sum().item()
    if wait:
        assert be.races == [] and total == 12.0
    else:
        assert any("streamorder_gpu_test.scale_into" in str(r) for r in be.races)
