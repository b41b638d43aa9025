"""record_stream, the caching allocators (device and pinned host) and non_blocking copies,
written as unittest.TestCase classes the way PyTorch's test/test_cuda.py writes them.

Sizes differ from test to test on purpose: a caching allocator hands out the best-fitting
free block of the stream's pool, and a pool shared with another test's leftovers of the
same size could otherwise make an address assertion depend on test order.
"""

import io
import unittest

import torch
from torch.utils.data import DataLoader, TensorDataset

from .common import sleep_ms


class TestRecordStream(unittest.TestCase):
    def test_record_stream_delays_reuse(self):
        """A block freed while recorded on a busy stream is not handed out until that work ends."""
        host = torch.arange(1000, dtype=torch.float32).pin_memory()
        result = torch.empty(1000, device="cuda")
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            tmp = host.to("cuda", non_blocking=True)
        block = tmp.data_ptr()
        torch.cuda.current_stream().wait_stream(side)
        tmp.record_stream(torch.cuda.current_stream())
        sleep_ms(50)  # the read of tmp below runs late
        result.copy_(tmp)
        del tmp
        with torch.cuda.stream(side):
            other = torch.empty(1000, device="cuda")
            self.assertNotEqual(other.data_ptr(), block, "allocation reused too soon")
        self.assertEqual(result.sum().item(), float(sum(range(1000))))
        torch.cuda.current_stream().synchronize()
        with torch.cuda.stream(side):
            again = torch.empty(1000, device="cuda")
            self.assertEqual(again.data_ptr(), block, "allocation not reused")
        del other

    def test_record_stream_on_shifted_view(self):
        """record_stream on a view with a storage offset protects the whole block."""
        alloc_stream = torch.cuda.Stream()
        with torch.cuda.stream(alloc_stream):
            base = torch.empty(1100, device="cuda")
        view = base[500:]
        self.assertGreater(view.storage_offset(), 0)
        busy = torch.cuda.Stream()
        with torch.cuda.stream(busy):
            sleep_ms(50)
        view.record_stream(busy)
        block = base.data_ptr()
        del base, view
        alloc_stream.synchronize()
        with torch.cuda.stream(alloc_stream):
            fresh = torch.empty(1100, device="cuda")
        self.assertNotEqual(fresh.data_ptr(), block)

    def test_same_stream_reuse_is_immediate(self):
        """A block freed on its own stream is reused at once: FIFO order makes that safe."""
        x = torch.ones(1234, device="cuda")
        block = x.data_ptr()
        total = x.sum()
        del x
        y = torch.zeros(1234, device="cuda")
        self.assertEqual(y.data_ptr(), block)
        self.assertEqual(total.item(), 1234.0)  # the sum read the ones before y's zeros


class TestCachingAllocatorStats(unittest.TestCase):
    def test_memory_allocated_tracks_tensors(self):
        """memory_allocated grows by a tensor's rounded size and shrinks when it is freed."""
        before = torch.cuda.memory_allocated()
        x = torch.empty(1024 * 1024, device="cuda")  # 4 MiB, a multiple of the rounding
        self.assertEqual(torch.cuda.memory_allocated() - before, 4 * 2**20)
        del x
        self.assertEqual(torch.cuda.memory_allocated(), before)

    def test_max_memory_allocated_after_reset(self):
        """reset_peak_memory_stats starts a new peak; the peak covers a freed tensor."""
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        x = torch.empty(2 * 1024 * 1024, device="cuda")  # 8 MiB
        del x
        self.assertGreaterEqual(torch.cuda.max_memory_allocated() - base, 8 * 2**20)

    def test_memory_stats_agree(self):
        """memory_stats() and memory_allocated() report the same current bytes."""
        x = torch.empty(5 * 1024, device="cuda")
        stats = torch.cuda.memory_stats()
        self.assertEqual(stats["allocated_bytes.all.current"], torch.cuda.memory_allocated())
        self.assertGreater(x.numel(), 0)

    def test_mem_get_info(self):
        """mem_get_info gives (free, total) device bytes with 0 < free <= total."""
        free, total = torch.cuda.mem_get_info()
        self.assertGreater(free, 0)
        self.assertLessEqual(free, total)

    def test_empty_cache_keeps_live_tensors(self):
        """empty_cache releases cached blocks only; live tensors keep their values."""
        x = torch.full((4096,), 2.0, device="cuda")
        y = torch.empty(8192, device="cuda")
        del y
        torch.cuda.empty_cache()
        self.assertEqual(x.sum().item(), 8192.0)


class TestPinnedMemory(unittest.TestCase):
    def test_pin_memory_is_pinned(self):
        """pin_memory() and pin_memory=True give page-locked host tensors."""
        a = torch.ones(8).pin_memory()
        b = torch.empty(8, pin_memory=True)
        self.assertTrue(a.is_pinned())
        self.assertTrue(b.is_pinned())
        self.assertFalse(torch.ones(8).is_pinned())

    def test_caching_pinned_memory_reuse(self):
        """The pinned host cache reuses a free block, but not while an H2D copy still reads it."""
        t = torch.full((37,), 1.0).pin_memory()
        block = t.data_ptr()
        del t
        t = torch.full((37,), 1.0).pin_memory()
        self.assertEqual(t.data_ptr(), block, "allocation not reused")
        dst = torch.zeros(37, device="cuda")
        sleep_ms(50)  # the copy below runs late
        dst.copy_(t, non_blocking=True)
        del t
        t = torch.full((37,), 1.0).pin_memory()
        self.assertNotEqual(t.data_ptr(), block, "allocation reused too soon")
        self.assertEqual(dst.sum().item(), 37.0)

    def test_to_cuda_non_blocking_from_pinned(self):
        """H2D from pinned memory with non_blocking returns before the copy ran."""
        src = torch.randn(100_000).pin_memory()
        torch.cuda.synchronize()
        sleep_ms(50)
        dst = src.to("cuda", non_blocking=True)
        self.assertFalse(torch.cuda.current_stream().query())
        torch.cuda.current_stream().synchronize()
        self.assertTrue(torch.equal(dst.cpu(), src))

    def test_to_cpu_non_blocking_gives_pinned(self):
        """D2H with non_blocking lands in fresh pinned memory; read it only after a sync."""
        src = torch.randn(100_000, device="cuda")
        torch.cuda.synchronize()
        sleep_ms(50)
        dst = src.to("cpu", non_blocking=True)
        self.assertTrue(dst.is_pinned())
        self.assertFalse(torch.cuda.current_stream().query())
        torch.cuda.current_stream().synchronize()
        self.assertTrue(torch.equal(dst, src.cpu()))

    def test_to_cpu_blocking_by_default(self):
        """A plain .to('cpu') waits for the current stream: query() is True afterwards."""
        src = torch.randn(100_000, device="cuda")
        sleep_ms(50)
        dst = src.to("cpu")
        self.assertTrue(torch.cuda.current_stream().query())
        self.assertFalse(dst.is_pinned())

    def test_pinned_rows_copied_in_flight(self):
        """Row-wise D2H copies into one pinned buffer: indexing a row is a view, not a read."""
        dev = torch.arange(12, device="cuda", dtype=torch.int64).view(3, 4)
        pinned = torch.empty(3, 4, dtype=torch.int64, pin_memory=True)
        for i in range(3):
            pinned[i].copy_(dev[i], non_blocking=True)
        torch.cuda.current_stream().synchronize()
        self.assertEqual(pinned.tolist(), [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]])

    def test_copy_returns_destination(self):
        """copy_(non_blocking=True) returns the destination tensor itself (vLLM returns it)."""
        src = torch.arange(6, dtype=torch.float32).pin_memory()
        dst = torch.empty(6, device="cuda")
        out = dst.copy_(src, non_blocking=True)
        self.assertIs(out, dst)
        self.assertEqual(out.sum().item(), 15.0)

    def test_dataloader_pin_memory(self):
        """DataLoader(pin_memory=True) yields pinned batches that copy to the device."""
        data = TensorDataset(torch.arange(16, dtype=torch.float32).view(8, 2))
        loader = DataLoader(data, batch_size=4, pin_memory=True)
        total = torch.zeros((), device="cuda")
        for (batch,) in loader:
            self.assertTrue(batch.is_pinned())
            total += batch.to("cuda", non_blocking=True).sum()
        self.assertEqual(total.item(), float(sum(range(16))))

    def test_untyped_storage_of_device_tensor(self):
        """A device tensor's untyped storage has its device, size and data pointer."""
        x = torch.zeros(4, device="cuda")
        storage = x.untyped_storage()
        self.assertEqual(storage.device.type, "cuda")
        self.assertEqual(storage.nbytes(), 16)
        self.assertEqual(storage.data_ptr(), x.data_ptr())

    def test_torch_load_cuda_tensor(self):
        """A saved CUDA tensor loads back onto the CUDA device with its values."""
        buffer = io.BytesIO()
        torch.save(torch.arange(5, device="cuda"), buffer)
        buffer.seek(0)
        loaded = torch.load(buffer)
        self.assertEqual(loaded.device.type, "cuda")
        self.assertEqual(loaded.tolist(), [0, 1, 2, 3, 4])


if __name__ == "__main__":
    unittest.main()
