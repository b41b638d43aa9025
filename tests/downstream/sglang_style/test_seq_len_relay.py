"""Publish / resolve across streams, as SGLang's overlap scheduler does it, with a broken
twin for each correct test. A twin differs from its correct test by one missing edge."""

import unittest

import torch

from .device_utils import delay_current_stream
from .seq_len_relay import SeqLenRelay


class UngatedRelay(SeqLenRelay):
    """BROKEN: the D2H stream does not wait for the publish event."""

    def _pull_to_host(self):
        with torch.cuda.stream(self.d2h_stream):
            self.seq_lens_host.copy_(self.seq_lens_buf, non_blocking=True)
        self.d2h_stream.synchronize()
        return self.seq_lens_host


class EarlyReadRelay(SeqLenRelay):
    """BROKEN: the host reads the pinned mirror before syncing the D2H stream."""

    def _pull_to_host(self):
        self.d2h_stream.wait_event(self.published)
        with torch.cuda.stream(self.d2h_stream):
            self.seq_lens_host.copy_(self.seq_lens_buf, non_blocking=True)
        return self.seq_lens_host


class RecordFirstRelay(SeqLenRelay):
    """BROKEN: the publish event is recorded before the write it should fence."""

    def publish(self, slots, new_lens):
        if slots.numel() == 0:
            return
        self._record_published()
        self.seq_lens_buf[slots] = new_lens


class TestSeqLenRelay(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.forward_stream = torch.cuda.Stream()
        cls.relay = SeqLenRelay(pool_size=16)
        cls.ungated = UngatedRelay(pool_size=16)
        cls.early_read = EarlyReadRelay(pool_size=16)
        cls.record_first = RecordFirstRelay(pool_size=16)

    def _forward(self, relay, slots, lens):
        """A late forward pass on the forward stream that publishes new lengths."""
        with torch.cuda.stream(self.forward_stream):
            delay_current_stream()
            relay.publish(torch.tensor(slots, device="cuda"),
                          torch.tensor(lens, device="cuda") + 1)

    def test_resolve_sees_published_lengths(self):
        """The D2H is gated on the publish event and synced before the host reads."""
        for step in range(3):
            self._forward(self.relay, [1, 4, 9], [10 * step, 20 * step, 30 * step])
            self.assertEqual(self.relay.resolve([1, 4, 9]),
                             [10 * step + 1, 20 * step + 1, 30 * step + 1])

    def test_resolve_ungated_d2h(self):
        """Twin: the D2H copy is not ordered after the publish write."""
        self._forward(self.ungated, [2, 3], [5, 6])
        self.assertEqual(self.ungated.resolve([2, 3]), [6, 7])

    def test_resolve_host_reads_before_sync(self):
        """Twin: the host reads pinned memory a pending D2H copy writes."""
        self._forward(self.early_read, [2, 3], [5, 6])
        self.assertEqual(self.early_read.resolve([2, 3]), [6, 7])
        torch.cuda.synchronize()

    def test_idle_step_keeps_last_publish(self):
        """An idle step publishes nothing; resolve still waits on the last real publish."""
        self._forward(self.relay, [0, 5], [40, 50])
        self._forward(self.relay, [], [])
        self.assertEqual(self.relay.resolve([0, 5]), [41, 51])

    def test_event_recorded_before_write(self):
        """Twin: the publish event fences nothing, so the D2H races the write."""
        self._forward(self.record_first, [0, 5], [40, 50])
        self.assertEqual(self.record_first.resolve([0, 5]), [41, 51])


class TestTwoStreamPublish(unittest.TestCase):
    """Two forward streams write one buffer (SGLang's publish after #30435)."""

    @classmethod
    def setUpClass(cls):
        cls.stream_a = torch.cuda.Stream()
        cls.stream_b = torch.cuda.Stream()

    def _write_from_two_streams(self, buf, slots_a, slots_b):
        for stream, slots, value in ((self.stream_a, slots_a, 1), (self.stream_b, slots_b, 2)):
            stream.wait_stream(torch.cuda.current_stream())  # after buf's zero-fill
            with torch.cuda.stream(stream):
                delay_current_stream()
                buf[torch.tensor(slots, device="cuda")] = value
        current = torch.cuda.current_stream()
        current.wait_stream(self.stream_a)
        current.wait_stream(self.stream_b)

    def test_disjoint_slots_two_streams(self):
        """Even slots from one stream, odd slots from another: no element shared."""
        buf = torch.zeros(8, dtype=torch.int64, device="cuda")
        self._write_from_two_streams(buf, [0, 2, 4, 6], [1, 3, 5, 7])
        self.assertEqual(buf.tolist(), [1, 2] * 4)

    def test_overlapping_slot_two_streams(self):
        """Twin: slot 6 is written by both streams with no edge between them."""
        buf = torch.zeros(8, dtype=torch.int64, device="cuda")
        self._write_from_two_streams(buf, [0, 2, 4, 6], [1, 3, 5, 6])
        self.assertIn(buf[6].item(), (1, 2))

    def test_column_halves_two_streams(self):
        """Left and right column halves (interleaved in memory) from two streams."""
        x = torch.zeros(4, 16, device="cuda")
        self.stream_a.wait_stream(torch.cuda.current_stream())
        self.stream_b.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream_a):
            delay_current_stream()
            x[:, :8].fill_(1.0)
        with torch.cuda.stream(self.stream_b):
            x[:, 8:].fill_(2.0)
        torch.cuda.current_stream().wait_stream(self.stream_a)
        torch.cuda.current_stream().wait_stream(self.stream_b)
        self.assertEqual(x.sum().item(), 4 * 8 * 3.0)

    def test_column_halves_overlap_one_column(self):
        """Twin: column 7 is written by both streams."""
        x = torch.zeros(4, 16, device="cuda")
        self.stream_a.wait_stream(torch.cuda.current_stream())
        self.stream_b.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream_a):
            delay_current_stream()
            x[:, :8].fill_(1.0)
        with torch.cuda.stream(self.stream_b):
            x[:, 7:].fill_(2.0)
        torch.cuda.current_stream().wait_stream(self.stream_a)
        torch.cuda.current_stream().wait_stream(self.stream_b)
        self.assertGreater(x.sum().item(), 0.0)


if __name__ == "__main__":
    unittest.main()
