"""A real decode step on the virtual device (issue 14, op coverage): the tiny decoder of
tests/tiny_decoder.py, built in a fixture, decodes on two streams and gives the CPU's
tokens and logits; dropping either edge of its overlap protocol is a race report."""

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch._dynamo  # noqa: E402,F401  (imported once here: in-process runs cannot re-import it)

import pytest_streamorder as so  # noqa: E402
import pytest_streamorder.sim.session  # noqa: E402,F401  (likewise)
from tests import tiny_decoder as td  # noqa: E402

pytest_plugins = ["pytester"]

STEPS = 6
START = [3, 17, 5]


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return td.TinyDecoder().state_dict()


def _model(weights, attn):
    model = td.TinyDecoder(attn)
    model.load_state_dict(weights)
    return model


def _cpu_reference(weights, attn):
    with torch.no_grad():
        return td.DecodeLoop(_model(weights, attn), START, "cpu").run(STEPS)


@pytest.mark.parametrize("grad", ["grad enabled", "inference_mode"])
@pytest.mark.parametrize("attn", ["sdpa", "manual"])
@pytest.mark.parametrize("policy,seed", [("random", 1), ("lazy", 0), ("delay", 3)])
def test_decode_steps_on_two_streams_give_the_cpu_result(weights, attn, grad, policy, seed):
    tokens_cpu, logits_cpu = _cpu_reference(weights, attn)
    ctx = torch.inference_mode() if grad == "inference_mode" else torch.enable_grad()
    with so.virtual_device(policy=policy, seed=seed) as vd, ctx:
        model = _model(weights, attn).cuda()
        tokens, logits = td.DecodeLoop(model, START, "cuda").run(STEPS)
    assert vd.races == []
    assert tokens == tokens_cpu
    torch.testing.assert_close(logits, logits_cpu)
    assert len(set(map(tuple, tokens))) > 1  # the steps decode something, not a constant


@pytest.mark.parametrize("policy,seed", [("random", 1), ("lazy", 0), ("delay", 3), ("eager", 0)])
def test_serving_loop_with_a_graph_a_compiled_helper_and_a_custom_op(weights, policy, seed):
    """The loop as an engine runs it: the forward captured once into a CUDA graph and
    replayed, its slot arithmetic compiled, its logits scaled by a torch.library op."""
    tokens_cpu, logits_cpu = _cpu_reference(weights, "sdpa")
    with so.virtual_device(policy=policy, seed=seed) as vd, torch.no_grad():
        loop = td.DecodeLoop(_model(weights, "sdpa").cuda(), START, "cuda", serving=True)
        tokens, logits = loop.run(STEPS)
    assert vd.races == []
    assert tokens == tokens_cpu
    torch.testing.assert_close(logits, logits_cpu * td.INV_TEMPERATURE)


def test_the_two_attention_paths_agree(weights):
    """sdpa (its math path, with a boolean mask) and attention by hand are one function."""
    torch.testing.assert_close(_cpu_reference(weights, "sdpa")[1],
                               _cpu_reference(weights, "manual")[1])


def test_top_k_top_p_sampling_with_a_cuda_generator():
    """topk, sort, softmax, cumsum, where with a Python scalar, scatter_, multinomial:
    the filtered distribution is the CPU's, the drawn tokens lie in its support, and the
    same generator seed draws the same tokens."""
    torch.manual_seed(1)
    logits = torch.randn(4, td.VOCAB) * 3
    _, filtered_cpu = td.sample(logits, torch.Generator().manual_seed(0))
    draws = []
    for _ in range(2):
        with so.virtual_device(policy="random", seed=5):
            g = torch.Generator(device="cuda")
            g.manual_seed(7)
            tokens, filtered = td.sample(logits.cuda(), g)
            draws.append((tokens.tolist(), filtered.cpu()))
    torch.testing.assert_close(draws[0][1], filtered_cpu)
    assert draws[0][0] == draws[1][0]
    for row, token in enumerate(draws[0][0]):
        assert filtered_cpu[row, token] > 0


def test_causal_sdpa_and_where_with_a_python_scalar_match_the_cpu():
    """Both make a tensor by device inside C++ (the causal mask, the wrapped scalar)."""
    torch.manual_seed(2)
    q, k, v = torch.randn(3, 1, 2, 5, 8).unbind(0)
    mask = torch.randn(5, 8) > 0
    expected = (torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
                torch.where(mask, q[0, 0], 0.0), torch.where(mask, 1, k[0, 0]))
    with so.virtual_device(policy="lazy") as vd:
        got = (torch.nn.functional.scaled_dot_product_attention(
                   q.cuda(), k.cuda(), v.cuda(), is_causal=True),
               torch.where(mask.cuda(), q[0, 0].cuda(), 0.0),
               torch.where(mask.cuda(), 1, k[0, 0].cuda()))
        assert all(t.device.type == "cuda" for t in got)
        got = [t.cpu() for t in got]
    assert vd.races == []
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_cpu_scalar_tensors_mix_with_device_tensors_as_on_cuda():
    with so.virtual_device(policy="lazy"):
        t = torch.arange(4.0).cuda()
        assert (t * torch.tensor(2.0)).tolist() == [0.0, 2.0, 4.0, 6.0]
        assert (torch.tensor(1) + t).tolist() == [1.0, 2.0, 3.0, 4.0]
        with pytest.raises(RuntimeError, match="same device"):
            t + torch.ones(4)  # a CPU tensor with dimensions does not mix


# --- under pytest --streamorder: the module built in a fixture, broken twins ----------

DECODE_TESTS = """
import pytest
import torch
import tiny_decoder as td

@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return td.TinyDecoder().cuda()      # built once, on the session's virtual device

@pytest.fixture(scope="module")
def expected():
    torch.manual_seed(0)
    with torch.no_grad():
        return td.DecodeLoop(td.TinyDecoder(), [3, 17, 5], "cpu").run(4)[0]

def test_overlapped_decode(model, expected):
    with torch.no_grad():
        assert td.DecodeLoop(model, [3, 17, 5], "cuda").run(4)[0] == expected

def test_forward_reads_inputs_before_they_are_ready(model):
    with torch.no_grad():
        td.DecodeLoop(model, [3, 17, 5], "cuda", wait_inputs=False).run(4)

def test_schedule_rewrites_inputs_while_forward_reads(model):
    with torch.no_grad():
        td.DecodeLoop(model, [3, 17, 5], "cuda", wait_forward=False).run(4)
"""


def test_broken_twins_of_the_decode_loop_fail_with_race_reports(pytester):
    pytester.makepyfile(tiny_decoder=(Path(td.__file__)).read_text())
    pytester.makepyfile(test_decode=DECODE_TESTS)
    pytester.syspathinsert()
    result = pytester.runpytest("--streamorder", "-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    for name in ("test_forward_reads_inputs_before_they_are_ready",
                 "test_schedule_rewrites_inputs_while_forward_reads"):
        assert f"FAILED test_decode.py::{name} - " in out
    # RAW: the forward stream reads what the schedule stream wrote, before inputs_ready.
    assert "race on 'positions' (int64[3]): read by stream 'forward_stream" in out
    # WAR: the schedule stream rewrites the input the previous forward still reads.
    assert "race on 'input_ids' (int64[3]): write by stream 'schedule_stream" in out
    assert "earlier read by stream 'forward_stream" in out


SERVING_TESTS = DECODE_TESTS.replace('"cuda"', '"cuda", serving=True')


def test_broken_twins_of_the_serving_loop_name_the_graph_replay(pytester):
    """SGLang's bug class: the schedule stream rewrites a static input of the captured
    decode graph while the previous replay may still read it."""
    assert SERVING_TESTS.count("serving=True") == 3
    pytester.makepyfile(tiny_decoder=(Path(td.__file__)).read_text())
    pytester.makepyfile(test_serving=SERVING_TESTS)
    pytester.syspathinsert()
    result = pytester.runpytest("--streamorder", "-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    assert "race on 'positions' (int64[3]): read by stream 'forward_stream" in out
    assert "race on 'input_ids' (int64[3]): write by stream 'schedule_stream" in out
    assert "[replay of CUDA graph 'graph', captured at tiny_decoder.py:" in out
