"""The virtual NVML: code that decides its platform through NVML (vLLM does, through its
vendored pynvml) takes its CUDA path on the virtual device, identity queries answer for
the virtual GPU, anything else is refused by name, and the modules are put back after."""

import sys
import textwrap

import pytest

import pytest_streamorder as so
from pytest_streamorder.errors import NotModelledError

# nvidia-ml-py as it behaves on a machine without a GPU: the library cannot be loaded.
NO_GPU_PYNVML = textwrap.dedent('''
    class NVMLError(Exception):
        pass

    def _fail(*args, **kwargs):
        raise NVMLError("NVML Shared Library Not Found")

    nvmlInit = nvmlShutdown = nvmlDeviceGetCount = nvmlDeviceGetHandleByIndex = _fail
    nvmlDeviceGetName = nvmlDeviceGetCudaComputeCapability = nvmlDeviceGetMemoryInfo = _fail
    nvmlDeviceGetUtilizationRates = _fail
''')


@pytest.fixture
def nvml_packages(tmp_path, monkeypatch):
    """`pynvml` and a vendored copy, `engine.third_party.pynvml`, importable and not yet
    imported."""
    (tmp_path / "pynvml.py").write_text(NO_GPU_PYNVML)
    vendored = tmp_path / "engine" / "third_party"
    vendored.mkdir(parents=True)
    (tmp_path / "engine" / "__init__.py").write_text("")
    (vendored / "__init__.py").write_text("")
    (vendored / "pynvml.py").write_text(NO_GPU_PYNVML)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("pynvml", "engine", "engine.third_party", "engine.third_party.pynvml"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield


def platform_of(pynvml) -> str:
    """A serving engine's platform check, the way vLLM's CUDA plugin decides it."""
    try:
        pynvml.nvmlInit()
        try:
            return "cuda" if pynvml.nvmlDeviceGetCount() > 0 else "cpu"
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return "cpu"


def test_a_vendored_nvml_imported_inside_the_device_sees_the_virtual_gpu(nvml_packages):
    with so.virtual_device():
        from engine.third_party import pynvml

        assert platform_of(pynvml) == "cuda"
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        assert "Virtual, pytest-streamorder" in pynvml.nvmlDeviceGetName(h)
        assert pynvml.nvmlDeviceGetCudaComputeCapability(h) == (8, 0)
        assert pynvml.nvmlDeviceGetMemoryInfo(h).total == 80 * 2**30
        with pytest.raises(NotModelledError, match="nvmlDeviceGetUtilizationRates"):
            pynvml.nvmlDeviceGetUtilizationRates(h)
        with pytest.raises(NotModelledError, match="device 0 only"):
            pynvml.nvmlDeviceGetHandleByIndex(1)
    assert platform_of(pynvml) == "cpu"  # put back: the machine's own answer


def test_an_nvml_imported_before_the_device_is_patched_and_restored(nvml_packages):
    import pynvml

    assert platform_of(pynvml) == "cpu"
    with so.virtual_device():
        assert platform_of(pynvml) == "cuda"
    assert platform_of(pynvml) == "cpu"
    assert not any(type(f).__name__ == "VirtualNVML" for f in sys.meta_path)
