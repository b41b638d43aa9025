"""Threads, generators, legacy constructors, device queries, modules and the CUDA APIs the
plugin does not model, written as unittest.TestCase classes the way PyTorch's
test/test_cuda.py writes them. Every body is correct CUDA code.
"""

import threading
import unittest
import warnings

import torch

from .common import sleep_ms


def run_in_threads(fn, count=1):
    """Run fn in `count` threads at once; return their results, re-raising a thread's error."""
    results, errors = [None] * count, []

    def body(i):
        try:
            results[i] = fn()
        except BaseException as exc:  # handed to the test's thread below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


class TestThreads(unittest.TestCase):
    def test_set_stream_in_worker_is_thread_local(self):
        """torch.cuda.set_stream in a worker thread leaves the main thread's stream alone."""
        before = torch.cuda.current_stream()

        def worker():
            s = torch.cuda.Stream()
            torch.cuda.set_stream(s)
            return torch.cuda.current_stream() == s

        self.assertEqual(run_in_threads(worker), [True])
        self.assertEqual(torch.cuda.current_stream(), before)

    def test_new_thread_starts_on_default_stream(self):
        """A thread started inside `with torch.cuda.stream(side)` begins on the default stream."""
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            (seen,) = run_in_threads(torch.cuda.current_stream)
        self.assertEqual(seen, torch.cuda.default_stream())

    def test_worker_stream_work_visible_after_join(self):
        """Work a thread queued on its own stream and synced there is visible after join."""
        def worker():
            s = torch.cuda.Stream()
            with torch.cuda.stream(s):
                sleep_ms(10)
                y = torch.arange(8, device="cuda") * 3
            s.synchronize()
            return y

        (y,) = run_in_threads(worker)
        self.assertEqual(y.tolist(), [3 * i for i in range(8)])

    def test_threads_matmul_on_own_streams(self):
        """Two threads multiply on their own streams, each gated on the main stream's input."""
        a = torch.randn(64, 64, device="cuda")
        main = torch.cuda.current_stream()
        expected = (a @ a).cpu()

        def worker():
            s = torch.cuda.Stream()
            s.wait_stream(main)
            with torch.cuda.stream(s):
                out = a @ a
            s.synchronize()
            return out.cpu()

        for out in run_in_threads(worker, 2):
            self.assertTrue(torch.allclose(out, expected, rtol=1e-4, atol=1e-4))


class TestGenerators(unittest.TestCase):
    def test_cuda_generator_reproducible(self):
        """A CUDA generator reseeded to the same seed draws the same numbers."""
        g = torch.Generator(device="cuda")
        g.manual_seed(1234)
        first = torch.rand(16, device="cuda", generator=g)
        g.manual_seed(1234)
        second = torch.rand(16, device="cuda", generator=g)
        self.assertEqual(g.device.type, "cuda")
        self.assertTrue(torch.equal(first, second))

    def test_cuda_manual_seed_reproducible(self):
        """torch.cuda.manual_seed seeds the default CUDA generator."""
        torch.cuda.manual_seed(99)
        first = torch.randn(16, device="cuda")
        torch.cuda.manual_seed(99)
        second = torch.randn(16, device="cuda")
        self.assertTrue(torch.equal(first, second))

    def test_multinomial_with_cuda_generator(self):
        """multinomial(generator=g) on the device is reproducible and picks allowed rows only."""
        probs = torch.tensor([0.0, 0.5, 0.0, 0.5], device="cuda")
        g = torch.Generator(device="cuda").manual_seed(7)
        first = torch.multinomial(probs, 8, replacement=True, generator=g)
        g.manual_seed(7)
        second = torch.multinomial(probs, 8, replacement=True, generator=g)
        self.assertTrue(torch.equal(first, second))
        self.assertTrue(set(first.tolist()) <= {1, 3})

    def test_cuda_rng_state_roundtrip(self):
        """get_rng_state / set_rng_state replay the default CUDA generator's draws."""
        state = torch.cuda.get_rng_state()
        first = torch.rand(8, device="cuda")
        torch.cuda.set_rng_state(state)
        second = torch.rand(8, device="cuda")
        self.assertTrue(torch.equal(first, second))


class TestDeviceAndModules(unittest.TestCase):
    def test_legacy_typed_constructors(self):
        """torch.cuda.FloatTensor / LongTensor build device tensors of their dtype."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # they are deprecated, and still used
            f = torch.cuda.FloatTensor(4).fill_(1.5)
            n = torch.cuda.LongTensor([1, 2, 3])
        self.assertTrue(f.is_cuda and n.is_cuda)
        self.assertEqual((f.dtype, n.dtype), (torch.float32, torch.int64))
        self.assertEqual((f.sum().item(), n.sum().item()), (6.0, 6))

    def test_device_properties(self):
        """get_device_properties(0) describes a real-looking GPU, uuid included."""
        props = torch.cuda.get_device_properties(0)
        self.assertIsInstance(props.name, str)
        self.assertGreater(props.total_memory, 0)
        self.assertGreater(props.multi_processor_count, 0)
        self.assertGreaterEqual(props.major, 8)
        self.assertGreater(len(str(props.uuid)), 0)
        self.assertEqual(torch.cuda.get_device_capability(0), (props.major, props.minor))
        self.assertEqual(torch.cuda.get_device_name(0), props.name)

    def test_device_context_manager(self):
        """torch.cuda.device is a class and a context manager selecting device 0."""
        ctx = torch.cuda.device(0)
        self.assertIsInstance(ctx, torch.cuda.device)
        with ctx:
            self.assertEqual(torch.cuda.current_device(), 0)
            x = torch.ones(2, device="cuda")
        self.assertEqual(x.device, torch.device("cuda", 0))

    def test_nvtx_ranges(self):
        """NVTX ranges only annotate a profile; the work inside runs as usual."""
        torch.cuda.nvtx.range_push("outer")
        with torch.cuda.nvtx.range("inner"):
            x = torch.ones(8, device="cuda") * 2
        torch.cuda.nvtx.mark("done")
        torch.cuda.nvtx.range_pop()
        self.assertEqual(x.sum().item(), 16.0)

    def test_autocast_cuda(self):
        """autocast('cuda') runs a matmul in float16."""
        a = torch.randn(8, 8, device="cuda")
        with torch.autocast("cuda", dtype=torch.float16):
            out = a @ a
        self.assertEqual(out.dtype, torch.float16)
        self.assertTrue(torch.allclose(out.float(), a @ a, rtol=1e-2, atol=1e-1))

    def test_module_forward_with_grad_params(self):
        """A forward pass through nn.Linear whose parameters require grad (no process abort)."""
        lin = torch.nn.Linear(4, 3).cuda()
        with torch.no_grad():
            lin.weight.fill_(1.0)
            lin.bias.zero_()
        out = lin(torch.ones(2, 4, device="cuda"))
        self.assertTrue(out.requires_grad)
        self.assertEqual(out.detach().cpu().tolist(), [[4.0] * 3] * 2)

    def test_module_backward(self):
        """backward() through nn.Linear on the device gives the expected weight gradient."""
        lin = torch.nn.Linear(4, 3).cuda()
        lin(torch.ones(2, 4, device="cuda")).sum().backward()
        self.assertEqual(lin.weight.grad.cpu().tolist(), [[2.0] * 4] * 3)


class TestUnmodelledAPIs(unittest.TestCase):
    """Correct code whose APIs are out of the model: expected to be refused by name."""

    def test_cuda_graph_capture_replay(self):
        """A captured graph replays its kernels on new input written into the static buffer."""
        static_in = torch.zeros(8, device="cuda")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up off the default stream, as the docs say
            static_out = static_in * 2
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = static_in * 2
        static_in.fill_(3.0)
        graph.replay()
        self.assertEqual(static_out.sum().item(), 48.0)

    def test_external_stream(self):
        """ExternalStream wraps a stream handle made elsewhere (here: by torch itself)."""
        owner = torch.cuda.Stream()
        ext = torch.cuda.ExternalStream(owner.cuda_stream)
        with torch.cuda.stream(ext):
            x = torch.ones(4, device="cuda")
        ext.synchronize()
        self.assertEqual(x.sum().item(), 4.0)

    def test_sync_debug_mode_warns(self):
        """set_sync_debug_mode('warn') warns at a synchronizing call such as .item()."""
        x = torch.ones(4, device="cuda")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with self.assertWarns(UserWarning):
                x.sum().item()
        finally:
            torch.cuda.set_sync_debug_mode(0)


if __name__ == "__main__":
    unittest.main()
