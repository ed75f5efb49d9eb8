"""CachedLaunch: Triton's own launch path the first time, the kept compiled kernel after it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

from mambaverse.kernels import triton_support
from mambaverse.kernels.triton_support import CachedLaunch
from tests.kernels.triton_helpers import CUDA


class FakeCompiled:
    """A compiled kernel whose launcher records what it is given."""

    function, packed_metadata = "function", ("metadata",)

    def __init__(self) -> None:
        self.launches: list[tuple] = []

    def run(self, *args) -> None:
        self.launches.append(args)


class FakeJIT:
    """A JITFunction: ``fn[grid](*args, **kwargs)`` records the call and returns its kernel."""

    arg_names = ("x_ptr", "n", "BLOCK", "FLAG")

    def __init__(self) -> None:
        self.compiled, self.calls = FakeCompiled(), []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((grid, args, kwargs))
            return self.compiled

        return launch


class FakeDriver:
    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> str:
        return "stream"


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> CachedLaunch:
    monkeypatch.setattr(triton.runtime.driver, "_active", FakeDriver())
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not triton_support._CACHEABLE:
        pytest.skip(f"Triton {triton.__version__}: CachedLaunch always takes Triton's path")
    return CachedLaunch(FakeJIT())


def test_a_repeated_call_goes_straight_to_the_kept_kernel(kernel: CachedLaunch) -> None:
    fn, x = kernel.fn, torch.zeros(64)
    kernel[(3, 2)](x, 7, FLAG=True, BLOCK=64, num_warps=4)
    assert len(fn.calls) == 1 and fn.compiled.launches == []  # Triton's path, which launches
    kernel[(3, 2)](x, 7, FLAG=True, BLOCK=64, num_warps=4)
    assert len(fn.calls) == 1
    # the launcher's arguments as JITFunction.run passes them: grid, stream, function,
    # metadata, no launch metadata or hooks, then every parameter in signature order
    assert fn.compiled.launches == [
        (3, 2, 1, "stream", "function", ("metadata",), None, None, None, x, 7, 64, True)
    ]


@pytest.mark.parametrize(
    "change",
    [
        lambda x: ((x[1:], 7), {}),  # another address modulo 16
        lambda x: ((x.double(), 7), {}),  # another dtype
        lambda x: ((x, 16), {}),  # an integer Triton specialises differently
        lambda x: ((x, 7), {"num_warps": 8}),  # another launch option
    ],
)
def test_what_triton_specialises_on_is_in_the_key(kernel: CachedLaunch, change) -> None:
    fn, x = kernel.fn, torch.zeros(64)
    kernel[(1,)](x, 7, BLOCK=64, FLAG=True, num_warps=4)
    args, options = change(x)
    kernel[(1,)](*args, BLOCK=64, FLAG=True, **{"num_warps": 4, **options})
    assert len(fn.calls) == 2 and fn.compiled.launches == []


def test_triton_keeps_calls_with_defaults_and_hooks(kernel, monkeypatch) -> None:
    fn, x = kernel.fn, torch.zeros(64)
    for _ in range(2):  # FLAG left to its default: Triton binds it
        kernel[(1,)](x, 7, BLOCK=64)
    assert len(fn.calls) == 2
    kernel[(1,)](x, 7, BLOCK=64, FLAG=True)
    hooks = triton.knobs.HookChain()
    hooks.add(lambda *a: None)  # a profiler's launch hook needs Triton's launch metadata
    monkeypatch.setattr(triton.knobs.runtime, "launch_enter_hook", hooks)
    kernel[(1,)](x, 7, BLOCK=64, FLAG=True)
    assert len(fn.calls) == 4 and fn.compiled.launches == []


@pytest.mark.skipif(CUDA, reason="the GPU tests launch for real; this replaces the driver")
def test_cached_launches_hand_the_launcher_what_triton_does() -> None:
    """Real kernels compiled for sm_90 without a GPU (cached_launch_check.py, own process)."""
    if not triton_support._CACHEABLE:
        pytest.skip(f"Triton {triton.__version__}: CachedLaunch always takes Triton's path")
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("Triton's bundled ptxas is missing: cannot compile for sm_90 here")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("cached_launch_check.py"))],
        cwd=root, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert done.stdout.count("arguments identical") == 8


def test_interpreted_kernels_are_never_kept() -> None:
    from triton.runtime.interpreter import InterpretedFunction

    def kernel(x_ptr, n):  # what triton.jit makes under TRITON_INTERPRET=1
        pass

    assert not CachedLaunch(InterpretedFunction(kernel)).cacheable
