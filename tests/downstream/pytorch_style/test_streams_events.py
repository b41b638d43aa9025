"""Streams, events and the generic device API, written as unittest.TestCase classes the way
PyTorch's test/test_cuda.py writes them. Every body is correct CUDA code: on a real GPU each
test passes; under `pytest --streamorder` each must pass or be refused by name (manifest.py).
"""

import unittest

import torch

from .common import TEST_CUDA, cycles_per_ms, sleep_ms


class TestStreams(unittest.TestCase):
    def test_cuda_visible_at_import(self):
        """An import-time availability check sees CUDA, so no silent CPU path is taken."""
        self.assertTrue(TEST_CUDA)
        self.assertIsNotNone(torch.version.cuda)

    def test_default_stream_is_current(self):
        """A test starts on the default stream; a new side stream is a different stream."""
        default = torch.cuda.default_stream()
        self.assertEqual(torch.cuda.current_stream(), default)
        side = torch.cuda.Stream()
        self.assertNotEqual(side, default)
        self.assertEqual(side.device, torch.device("cuda", 0))

    def test_stream_context_restores_current(self):
        """`with torch.cuda.stream(s)` makes s current, nests, and restores on exit."""
        side = torch.cuda.Stream()
        before = torch.cuda.current_stream()
        with torch.cuda.stream(side):
            self.assertEqual(torch.cuda.current_stream(), side)
            with torch.cuda.stream(torch.cuda.default_stream()):
                self.assertEqual(torch.cuda.current_stream(), torch.cuda.default_stream())
            self.assertEqual(torch.cuda.current_stream(), side)
        self.assertEqual(torch.cuda.current_stream(), before)

    def test_wait_stream_orders_side_after_current(self):
        """wait_stream: the side stream reads what the current stream wrote before the wait."""
        x = torch.zeros(256, device="cuda")
        sleep_ms(20)  # the fill below lands late on the current stream
        x.fill_(3.0)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            y = x * 2
        side.synchronize()  # the host is now after y's write; a later launch inherits that
        self.assertEqual(y.sum().item(), 256 * 6.0)

    def test_three_stream_wait_chain(self):
        """a -> b -> c through wait_stream: c sees a's write two edges away."""
        a, b, c = torch.cuda.Stream(), torch.cuda.Stream(), torch.cuda.Stream()
        with torch.cuda.stream(a):
            sleep_ms(10)
            x = torch.full((64,), 7.0, device="cuda")
        b.wait_stream(a)
        with torch.cuda.stream(b):
            x.add_(1.0)
        c.wait_stream(b)
        with torch.cuda.stream(c):
            total = x.sum()
        c.synchronize()
        self.assertEqual(total.item(), 64 * 8.0)

    def test_stream_query_false_while_busy(self):
        """query() right after a 50 ms sleep is False; a host polling loop then ends."""
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            sleep_ms(50)
        self.assertFalse(side.query())
        while not side.query():
            pass
        self.assertTrue(side.query())

    def test_stream_priority(self):
        """Priorities change scheduling, not ordering: streams of both ends work as usual."""
        low, high = torch.cuda.Stream.priority_range()
        s_low = torch.cuda.Stream(priority=low)
        s_high = torch.cuda.Stream(priority=high)
        self.assertEqual(s_low.priority, low)
        self.assertEqual(s_high.priority, high)
        with torch.cuda.stream(s_high):
            x = torch.ones(8, device="cuda")
        s_high.synchronize()
        self.assertEqual(x.sum().item(), 8.0)

    def test_streams_hashable_with_repr(self):
        """Streams are dict keys (engines keep per-stream state) and say what they are."""
        a, b = torch.cuda.Stream(), torch.cuda.Stream()
        table = {a: "a", b: "b"}
        self.assertEqual(table[a], "a")
        self.assertEqual(table[b], "b")
        self.assertIn("torch.cuda.Stream", repr(a))

    def test_cuda_stream_handles(self):
        """cuda_stream and __cuda_stream__ (the CUDA stream protocol) are opaque ints."""
        a, b = torch.cuda.Stream(), torch.cuda.Stream()
        self.assertIsInstance(a.cuda_stream, int)
        self.assertNotEqual(a.cuda_stream, b.cuda_stream)
        version, handle = a.__cuda_stream__()
        self.assertEqual((version, handle), (0, a.cuda_stream))

    def test_synchronize_device_orders_host(self):
        """torch.cuda.synchronize() puts the host after every stream's work."""
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            sleep_ms(10)
            x = torch.arange(16, device="cuda", dtype=torch.float32)
        torch.cuda.synchronize()
        self.assertEqual(x.cpu().tolist(), [float(i) for i in range(16)])


class TestEvents(unittest.TestCase):
    def test_event_synchronize_then_query(self):
        """event.synchronize() waits for the captured work; query() is True afterwards."""
        side = torch.cuda.Stream()
        done = torch.cuda.Event()
        with torch.cuda.stream(side):
            sleep_ms(10)
        done.record(side)
        done.synchronize()
        self.assertTrue(done.query())

    def test_event_query_false_while_busy(self):
        """An event recorded after a 50 ms sleep is not reached at once."""
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            sleep_ms(50)
        done = side.record_event()
        self.assertFalse(done.query())
        done.synchronize()
        self.assertTrue(done.query())

    def test_event_elapsed_time(self):
        """elapsed_time between two timing events brackets a 20 ms sleep."""
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(int(20 * cycles_per_ms()))
        end.record()
        end.synchronize()
        elapsed = start.elapsed_time(end)
        self.assertGreater(elapsed, 10.0)
        self.assertLess(elapsed, 1000.0)

    def test_wait_event_orders_reader(self):
        """stream.wait_event: the reader stream starts after the writer's recorded point."""
        writer, reader = torch.cuda.Stream(), torch.cuda.Stream()
        written = torch.cuda.Event()
        with torch.cuda.stream(writer):
            sleep_ms(20)
            x = torch.full((32,), 5, device="cuda", dtype=torch.int64)
            written.record()
        reader.wait_event(written)
        with torch.cuda.stream(reader):
            total = x.sum()
        reader.synchronize()
        self.assertEqual(total.item(), 160)

    def test_event_wait_method(self):
        """event.wait(stream) is the same edge as stream.wait_event(event)."""
        writer = torch.cuda.Stream()
        written = torch.cuda.Event()
        with torch.cuda.stream(writer):
            sleep_ms(20)
            x = torch.ones(32, device="cuda")
        written.record(writer)
        written.wait(torch.cuda.current_stream())
        self.assertEqual(x.sum().item(), 32.0)  # .item() syncs the current stream only

    def test_wait_on_unrecorded_event_is_noop(self):
        """Waiting on an event never recorded does nothing (and does not hang)."""
        never = torch.cuda.Event()
        side = torch.cuda.Stream()
        side.wait_event(never)
        with torch.cuda.stream(side):
            x = torch.full((4,), 2.0, device="cuda")
        side.synchronize()
        self.assertTrue(never.query())
        self.assertEqual(x.sum().item(), 8.0)

    def test_event_rerecord_moves_fence(self):
        """Re-recording an event moves its capture: a later waiter sees the second write."""
        writer, reader = torch.cuda.Stream(), torch.cuda.Stream()
        ready = torch.cuda.Event()
        x = torch.zeros(8, device="cuda")
        writer.wait_stream(torch.cuda.current_stream())  # x's zero-fill comes first
        with torch.cuda.stream(writer):
            x.fill_(1.0)
            ready.record()
            sleep_ms(20)
            x.fill_(2.0)
            ready.record()
        reader.wait_event(ready)  # waits on the second capture
        with torch.cuda.stream(reader):
            total = x.sum()
        reader.synchronize()
        self.assertEqual(total.item(), 16.0)

    def test_cuda_event_handle(self):
        """A recorded event's cuda_event is an opaque non-zero int; repr names the type."""
        ev = torch.cuda.Event()
        ev.record()
        self.assertIsInstance(ev.cuda_event, int)
        self.assertNotEqual(ev.cuda_event, 0)
        self.assertIn("torch.cuda.Event", repr(ev))

    def test_interprocess_event_handle(self):
        """An interprocess event hands out an IPC handle (another process can wait on it)."""
        ev = torch.cuda.Event(interprocess=True)
        ev.record()
        handle = ev.ipc_handle()
        self.assertIsInstance(handle, bytes)
        ev.synchronize()


class TestGenericDeviceAPI(unittest.TestCase):
    def test_torch_event_is_a_cuda_event(self):
        """torch.Event(device='cuda') orders a reader after a side-stream write (vLLM uses it)."""
        side = torch.cuda.Stream()
        ev = torch.Event(device="cuda")
        self.assertEqual(ev.device.type, "cuda")
        with torch.cuda.stream(side):
            sleep_ms(20)
            x = torch.full((16,), 3.0, device="cuda")
        ev.record(side)
        ev.wait(torch.cuda.current_stream())
        self.assertEqual(x.sum().item(), 48.0)

    def test_torch_stream_cuda(self):
        """torch.Stream('cuda') is a CUDA stream: a context manager with synchronize/query."""
        s = torch.Stream("cuda")
        self.assertEqual(s.device.type, "cuda")
        s.wait_stream(torch.cuda.current_stream())
        with s:
            x = torch.ones(8, device="cuda") * 4
        s.synchronize()
        self.assertTrue(s.query())
        self.assertEqual(x.sum().item(), 32.0)

    def test_accelerator_queries(self):
        """torch.accelerator reports the CUDA device and synchronizes it."""
        self.assertTrue(torch.accelerator.is_available())
        self.assertEqual(torch.accelerator.current_accelerator().type, "cuda")
        self.assertGreaterEqual(torch.accelerator.device_count(), 1)
        x = torch.ones(4, device="cuda")
        torch.accelerator.synchronize()
        self.assertEqual(x.sum().item(), 4.0)

    def test_accelerator_set_stream_is_cuda_current(self):
        """torch.accelerator.set_stream changes torch.cuda.current_stream, and back."""
        side = torch.cuda.Stream()
        default = torch.cuda.default_stream()
        torch.accelerator.set_stream(side)
        try:
            self.assertEqual(torch.cuda.current_stream(), side)
            self.assertEqual(torch.accelerator.current_stream().stream_id, side.stream_id)
        finally:
            torch.accelerator.set_stream(default)
        self.assertEqual(torch.cuda.current_stream(), default)

    def test_get_device_module(self):
        """torch.get_device_module('cuda') is torch.cuda (SGLang builds streams through it)."""
        mod = torch.get_device_module(torch.device("cuda", 0))
        self.assertIs(mod, torch.cuda)
        s = mod.Stream()
        with mod.stream(s):
            self.assertEqual(mod.current_stream(), s)


if __name__ == "__main__":
    unittest.main()
