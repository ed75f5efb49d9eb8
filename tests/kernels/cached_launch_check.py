"""Run by test_cached_launch.py in its own process (it replaces Triton's driver): every launch of
a Mamba-2 layer's Triton ops (SSD, convolution, gated norm) and of attention, fwd+bwd, hands the
C launcher the same arguments through CachedLaunch as through Triton's own path.

No GPU: a fake driver reports device 0, stream 0 and sm_90; Triton compiles the kernels for
sm_90 with its bundled ptxas; the compiled kernels' launchers are replaced by a recorder.
"""

from __future__ import annotations

import torch
from triton.backends.compiler import GPUTarget
from triton.compiler import compiler
from triton.runtime.driver import driver


class FakeDriver:
    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


RECORD: list[tuple] = []


def _handles(self) -> None:  # CompiledKernel._init_handles without a GPU: launches are recorded
    if self.module is None:
        self.module, self.function, self._run = 1, 0, lambda *a: RECORD.append(a)


driver.set_active(FakeDriver())
compiler.CompiledKernel._init_handles = _handles

from mambaverse.kernels import triton_support  # noqa: E402

# CPU tensors stand in for CUDA ones: the device check passes them, the SM count is the H100's.
triton_support.check_device.__code__ = (lambda op, tensors: torch.device("cpu")).__code__
triton_support.multiprocessors.__code__ = (lambda device: 132).__code__

from mambaverse.kernels.attention import triton as attention  # noqa: E402
from mambaverse.kernels.causal_conv1d import triton as conv  # noqa: E402
from mambaverse.kernels.gated_rms_norm import triton as norm  # noqa: E402
from mambaverse.kernels.ssd_scan import triton as ssd  # noqa: E402


def leaf(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.randn(*shape).to(dtype).requires_grad_()


def ops(batch: int, length: int, heads: int, groups: int):
    """fwd+bwd closures at Mamba-2's layout: x, B, C slices of one conv output, as in the mixer."""
    p, n = 64, 64
    width = heads * p + 2 * groups * n
    xBC, dt, bias = leaf(batch, length, width), leaf(batch, length, heads), leaf(heads)
    A, D = (-torch.rand(heads)).requires_grad_(), leaf(heads, dtype=torch.float32)
    u = leaf(batch, length, width).detach().transpose(1, 2).requires_grad_()
    w, cb = leaf(width, 4, dtype=torch.float32), leaf(width, dtype=torch.float32)
    y, z, g = leaf(batch, length, heads * p), leaf(batch, length, heads * p), leaf(heads * p)
    q, kv = leaf(batch, 4, length, 64), leaf(batch, 2, length, 64)

    def ssd_step() -> torch.Tensor:
        x, B, C = xBC.split([heads * p, groups * n, groups * n], -1)
        return ssd.ssd_scan(x.unflatten(-1, (heads, p)), dt, A, B.unflatten(-1, (groups, n)),
                            C.unflatten(-1, (groups, n)), 128, D=D, dt_bias=bias,
                            dt_softplus=True)  # fmt: skip

    return {
        "ssd_scan": ssd_step,
        "causal_conv1d": lambda: conv.causal_conv1d(u, w, cb, activation="silu"),
        "gated_rms_norm": lambda: norm.gated_rms_norm(y, z, g, heads * p // groups),
        "attention": lambda: attention.attention(q, kv, kv, causal=True),
    }


def launches(step) -> list[tuple]:
    """What the launcher got in one fwd+bwd: tensors as (shape, strides, dtype); the launch
    metadata and the two hook chains (positions 6-8) left out, checked separately."""
    RECORD.clear()
    out = step()
    out.backward(torch.ones_like(out))

    def plain(a):
        return (tuple(a.shape), a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a

    return [tuple(map(plain, call[:6] + call[9:])) for call in RECORD], [c[6:9] for c in RECORD]


def main() -> None:
    cached_launch = triton_support.CachedLaunch.launch

    def tritons_own(self, grid, args, kwargs):
        self.fn[grid](*args, **kwargs)

    for shape in ((1, 300, 4, 1), (2, 130, 4, 2)):
        for name, step in ops(*shape).items():
            triton_support.CachedLaunch.launch = tritons_own
            launches(step)  # compiles
            expected, _ = launches(step)
            triton_support.CachedLaunch.launch = cached_launch
            launches(step)  # the first call of each key goes through Triton and is kept
            found, hooks = launches(step)
            assert found == expected, f"{name} {shape}: launcher arguments differ"
            assert all(h == (None, None, None) for h in hooks), f"{name}: not the cached path"
            print(f"{name} {shape}: {len(found)} launches, arguments identical")


if __name__ == "__main__":
    main()
