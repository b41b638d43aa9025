"""The native CUDA device guard: with it, torch's C++ paths that open a CUDA device guard
raise Python errors (or work) instead of aborting the whole process."""

import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(torch.backends.cuda.is_built(),
                                reason="a CUDA build of torch registers its own guard")

# A module with grad-requiring parameters, moved to the virtual device: its forward pass
# reaches autograd's C++, which opens a CUDA device guard.
PROGRAM = textwrap.dedent("""
    import sys, torch
    import pytest_streamorder as so
    from pytest_streamorder.sim import cuda_guard
    if sys.argv[1] == "guard":
        reason = cuda_guard.install()
        assert reason == "", reason
    elif sys.argv[1] == "none":  # virtual_device() builds the guard itself: say it is there
        cuda_guard._status = ""
    with so.virtual_device(seed=0, policy="eager"):
        x = torch.randn(2, 4, device="cuda")
        model = torch.nn.Linear(4, 4).to("cuda")
        try:
            model(x)
        except Exception as exc:
            print("python error:", type(exc).__name__)
    print("process still alive")
""")


def _run(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True,
                          text=True, timeout=300)


def test_without_the_guard_the_process_aborts():
    """The control: this is the abort the guard exists for (if torch ever stops
    aborting here, the guard is no longer needed for this path)."""
    result = _run("none")
    assert result.returncode != 0
    assert "not linked with support for cuda devices" in result.stderr
    assert "process still alive" not in result.stdout


def test_with_the_guard_the_process_survives():
    result = _run("guard")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "terminate called" not in result.stderr
    assert "process still alive" in result.stdout


def test_a_plain_virtual_device_builds_the_guard_itself():
    """No explicit install: virtual_device() builds it, so a grad-enabled forward works."""
    result = _run("plain")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "python error" not in result.stdout and "process still alive" in result.stdout


def test_install_is_idempotent():
    from pytest_streamorder.sim import cuda_guard

    assert cuda_guard.install() == ""
    assert cuda_guard.install() == ""
