"""Guards: the suite's helpers took their CUDA path. A silent `.cpu()` fallback would keep
every twin in this folder green while testing the wrong code, so these fail instead."""

import unittest

import torch

from . import device_utils
from .seq_len_relay import SeqLenRelay


def test_helper_took_cuda_path():
    """The import-time platform check saw CUDA (SGLang's is_cuda())."""
    assert device_utils.is_cuda()
    assert device_utils.CODE_PATH == "cuda"


class TestRelayPath(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.relay = SeqLenRelay(pool_size=8)

    def test_relay_uses_private_d2h_stream(self):
        """The relay built its pinned mirror and private D2H stream, not the fallback."""
        self.assertIsNotNone(self.relay.d2h_stream)
        self.assertTrue(self.relay.seq_lens_host.is_pinned())
        self.assertEqual(self.relay.seq_lens_buf.device.type, "cuda")
        self.assertIsInstance(self.relay.d2h_stream, torch.cuda.Stream)


if __name__ == "__main__":
    unittest.main()
