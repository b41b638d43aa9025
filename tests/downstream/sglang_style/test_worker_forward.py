"""A forward pass in a worker thread with its own stream, as SGLang's older overlap
scheduler ran it: the worker hands (output, done-event) to the scheduler thread through a
queue, and the scheduler's stream waits on the event before it reads the output."""

import queue
import threading
import unittest

import torch
from torch import nn


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 16)
        self.requires_grad_(False)  # serving weights: no autograd

    def forward(self, x):
        return torch.relu(self.proj(x)) + 1


def forward_worker(model, inputs, out_queue):
    """The worker thread: its own stream, one forward, an event after it."""
    stream = torch.cuda.Stream()
    with torch.inference_mode(), torch.cuda.stream(stream):
        torch.cuda._sleep(20_000_000)  # a slow forward pass
        out = model(inputs)
        done = torch.cuda.Event()
        done.record()
    out_queue.put((out, done))


class TestWorkerForward(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.manual_seed(0)
        cls.model = TinyModel().cuda()
        cls.inputs = torch.randn(4, 16).cuda()
        with torch.inference_mode():
            cls.expected = cls.model(cls.inputs).cpu()
        torch.cuda.synchronize()  # the worker's stream starts after all of this

    def _run_worker(self):
        results = queue.Queue()
        worker = threading.Thread(target=forward_worker, args=(self.model, self.inputs, results))
        worker.start()
        out, done = results.get(timeout=60)
        worker.join()
        return out, done

    def test_forward_in_worker_thread(self):
        """The scheduler's stream waits on the worker's done-event before reading."""
        out, done = self._run_worker()
        torch.cuda.current_stream().wait_event(done)
        self.assertTrue(torch.allclose(out.cpu(), self.expected, rtol=1e-4, atol=1e-4))

    def test_forward_in_worker_thread_no_wait(self):
        """Twin: the scheduler reads the output with only the queue's host-side handoff."""
        out, _ = self._run_worker()
        got = out.cpu()
        torch.cuda.synchronize()
        self.assertEqual(got.shape, self.expected.shape)


if __name__ == "__main__":
    unittest.main()
