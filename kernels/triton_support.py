"""What every Triton kernel wrapper shares: input checks with clear errors, and small jit helpers.

The checks run before any launch so that a wrong input fails with one line naming the tensor,
what was expected and what was given, instead of an illegal memory access inside a kernel.
Triton kernels read any strides, so no input has to be contiguous.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from mambaverse.errors import KernelUnavailableError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# exp(x) = exp2(x · log2 e); exp2 is the hardware instruction. A constexpr, so kernels may read it
# (Triton 3.6 refuses plain globals); host code uses LOG2E.value.
LOG2E = tl.constexpr(1.4426950408889634)


def interpreting() -> bool:
    """Whether Triton runs kernels on the CPU through its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_device(op: str, tensors: dict[str, torch.Tensor | None]) -> torch.device:
    """All given tensors on one device, and that device one a Triton kernel can run on."""
    present = {name: t for name, t in tensors.items() if t is not None}
    first_name, first = next(iter(present.items()))
    device = first.device
    for name, t in present.items():
        if t.device != device:
            raise ValueError(
                f"{op} (triton): {name} is on {t.device} but {first_name} is on {device}; "
                "move every input to one device"
            )
    if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
        raise KernelUnavailableError(
            f"{op} (triton): inputs are on {device}; the Triton kernels need CUDA tensors "
            "(or TRITON_INTERPRET=1 to interpret them on the CPU)"
        )
    return device


# The kernels index a batch element's start in 64 bits and offsets within it in 32 (cheaper
# address arithmetic in every tile): a tensor must span fewer elements than this within one.
MAX_SPAN = 2**31


def check_offsets(op: str, tensors: dict[str, torch.Tensor | None], way_out: str) -> None:
    """Each tensor's elements within one batch element (dim 0) lie less than 2³¹ apart, so the
    kernels' 32-bit offsets cannot wrap (e.g. Mamba-2 2.7B's Δ, a slice of 10,576-wide in_proj
    rows, reaches it at about 203k steps)."""
    for name, t in tensors.items():
        if t is None or t.dim() < 2:
            continue
        span = sum(max(size - 1, 0) * abs(st) for size, st in zip(t.shape[1:], t.stride()[1:]))
        if span >= MAX_SPAN:
            raise ValueError(
                f"{op} (triton): {name} of shape {tuple(t.shape)} and strides {t.stride()} spans "
                f"{span:,} elements within one batch element; the kernel's offsets there are 32-bit "
                f"(under {MAX_SPAN:,}). {way_out}"
            )


def records_gradient(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records a graph through any of ``tensors`` here: grad mode on and one of
    them requiring a gradient (under ``torch.no_grad()`` ``ctx.needs_input_grad`` still says True,
    so the kernels' inference paths ask this)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def check_step_inputs(
    op: str, tensors: dict[str, torch.Tensor | None], training_op: str
) -> torch.device:
    """What every decoding-step kernel checks first: one device a Triton kernel runs on, float
    dtypes, and no gradient asked for (a step updates its state in place and records none)."""
    device = check_device(op, tensors)
    check_float(op, tensors)
    if records_gradient(*tensors.values()):
        raise RuntimeError(
            f"{op} (triton) updates its state in place and records no gradient; call it under "
            f"torch.no_grad() (generation) or use {training_op} for training"
        )
    return device


def check_interpretable_dot(op: str, tensors: dict[str, torch.Tensor | None]) -> None:
    """Under TRITON_INTERPRET=1, refuse bfloat16 operands of a kernel's ``tl.dot``: Triton's
    interpreter keeps bfloat16 as uint16 and multiplies the bit patterns (values near 1e10;
    triton-lang/triton#11584, in 3.6 and 3.8; float16 and float32 are exact there)."""
    if not interpreting():
        return
    for name, t in tensors.items():
        if t is not None and t.dtype == torch.bfloat16:
            raise KernelUnavailableError(
                f"{op} (triton): {name} is bfloat16, and Triton's interpreter (TRITON_INTERPRET=1) "
                "computes tl.dot on bfloat16 operands wrongly (triton-lang/triton#11584); pass "
                "float32 or float16 inputs to interpret it, or use impl='reference'"
            )


def check_float(op: str, tensors: dict[str, torch.Tensor | None]) -> None:
    for name, t in tensors.items():
        if t is not None and t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{op} (triton): {name} has dtype {t.dtype}; expected float16, bfloat16 or float32"
            )


def check_shape(op: str, name: str, t: torch.Tensor | None, expected: Sequence[int]) -> None:
    if t is not None and tuple(t.shape) != tuple(expected):
        raise ValueError(
            f"{op} (triton): {name} has shape {tuple(t.shape)}; expected {tuple(expected)}"
        )


def check_rank(op: str, name: str, t: torch.Tensor, ranks: Sequence[int], layout: str) -> None:
    if t.dim() not in ranks:
        raise ValueError(f"{op} (triton): {name} has shape {tuple(t.shape)}; expected {layout}")


# Host-side integer helpers in plain Python: triton.cdiv and triton.next_power_of_2 are constexpr
# functions, about 2 µs a call from Python, and a training step makes hundreds of these calls.
def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for positive b."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of 2 ≥ n (1 for n ≤ 1)."""
    return 1 << (max(int(n), 1) - 1).bit_length()


def multiprocessors(device: torch.device) -> int:
    """The GPU's streaming multiprocessors (SMs): how many programs run at once is a multiple."""
    return torch.cuda.get_device_properties(device).multi_processor_count


# Row kernels (norms over the last dimension): a tile of whole rows, as many as fill this many
# elements (short rows, such as Vim-Ti's 192 channels, share a tile).
ROW_TILE_ELEMENTS = 4096


def row_tile(width: int) -> tuple[int, int, int]:
    """(BLOCK_R rows, BLOCK_D channels, warps) for a row kernel over rows of ``width`` channels;
    the interpreter gets tiles of two rows, so that tiny tests cover several and ragged ones."""
    block_d = next_pow2(width)
    if interpreting():
        return 2, block_d, 1
    block_r = max(1, ROW_TILE_ELEMENTS // block_d)
    return block_r, block_d, min(16, max(4, block_r * block_d // 512))


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """(..., d) -> (rows, d) with unit channel stride; a copy only when no such view exists."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def row_programs(rows: int, block_r: int, device: torch.device, per_sm: int = 8) -> int:
    """Programs for a row kernel's backward, ``per_sm`` per multiprocessor (at most one per
    tile), each walking row tiles pid, pid + programs, ... and summing its share of the
    weight's gradient."""
    tiles = cdiv(rows, block_r)
    if device.type != "cuda":
        return min(tiles, 2)  # the interpreter: two programs, each walking several tiles
    return min(tiles, per_sm * multiprocessors(device))


def channels_innermost(x: torch.Tensor) -> bool:
    """Whether a (b, d, l) tensor has its channels innermost (a transposed (b, l, d) one)."""
    return x.stride(1) == 1 and x.shape[1] > 1


def empty_like_sequence(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An empty (b, d, l) tensor laid out as x: channels innermost when x's are (the Mamba block
    passes slices of a (b, l, ·) projection, transposed), else contiguous. Kernels then store
    neighbouring channels together at each step, and the caller's transpose back to (b, l, d)
    needs no copy."""
    batch, dim, seqlen = x.shape
    dtype = dtype or x.dtype
    if channels_innermost(x):
        return torch.empty((batch, seqlen, dim), device=x.device, dtype=dtype).transpose(1, 2)
    return torch.empty((batch, dim, seqlen), device=x.device, dtype=dtype)


def stride_alignment(*strides: int) -> int:
    """The largest power of two up to 16 that divides every stride: what a kernel may declare
    the offsets along that axis a multiple of (`strided`). Triton specialises an integer
    argument only as divisible by 16 or not, so a row stride such as Mamba-2's in_proj width,
    3352 = 8 · 419, would otherwise cost the vectorised loads (16 bytes: 8 bf16) and keep a
    pointer per element in registers."""
    align = 16
    while align > 1 and any(stride % align for stride in strides):
        align //= 2
    return align


def dot_width(n: int) -> int:
    """A tile side for tl.dot: a power of 2 of at least 16 (the tensor cores' minimum); the
    kernels mask the padding, so any size works."""
    return max(16, next_pow2(n))


@triton.jit
def strided(index, stride, ALIGN: tl.constexpr, AXIS: tl.constexpr):
    """index · stride, declared a multiple of ALIGN (checked by the host: `stride_alignment`):
    a scalar for a scalar index, else a 2-D column (AXIS 0) or row (AXIS 1) of a tile. The hint
    goes on the 1-D product, before it is made 2-D: Triton drops a hint put on a function's
    argument, and Triton 3.6 reads a 2-D hint ``[ALIGN, 1]`` on an (n, 1) column as
    divisibility 1 along the size-1 axis, which then vectorises nothing along the channels."""
    offsets = index * stride
    if ALIGN > 1:
        offsets = tl.multiple_of(offsets, ALIGN)
    if len(index.shape) > 0:
        offsets = offsets[:, None] if AXIS == 0 else offsets[None, :]
    return offsets


@triton.jit
def softplus(x):
    # log(1 + e^x), exact to fp32 rounding; above 20 it equals x (torch's threshold).
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def silu_and_grad(z):
    """silu(z) = z·σ(z) and its derivative σ(z)·(1 + z·(1 − σ(z)))."""
    sig = tl.sigmoid(z)
    return z * sig, sig * (1.0 + z * (1.0 - sig))


# Triton 3.4 to 3.8 launch a compiled kernel as CachedLaunch does (JITFunction.run's last call);
# elsewhere it always takes Triton's own path.
_CACHEABLE = hasattr(triton, "knobs") and (3, 4) <= tuple(
    int(part) for part in triton.__version__.split(".")[:2]
) <= (3, 8)


def _hooked() -> bool:
    """Whether a launch hook is installed (Triton 3.6 keeps an empty HookChain when none is,
    and still builds launch metadata and calls it on every launch)."""
    runtime = triton.knobs.runtime
    return any(
        hook is not None and getattr(hook, "calls", True)
        for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook)
    )


class CachedLaunch:
    """``kernel[grid](*args, **constexprs)`` for a Triton kernel, without Triton's per-call
    argument binding once the same call has been launched before.

    Triton's ``JITFunction.run`` binds and specialises every argument, builds a cache key and
    the launch metadata on each call: ~35 µs of Python per launch of ours, as much as the GPU
    work of a short kernel, ~10 ms per Mamba-2-130m training step. Here the first call with a
    given key goes through Triton (which compiles, specialises and launches) and its compiled
    kernel is kept; later calls hand the same arguments to that kernel's launcher, as
    ``JITFunction.run`` itself does. The key is finer than Triton's specialisation (every
    integer's value, every tensor's dtype and address modulo 16, the constexprs and options, the
    device), so a cached kernel is always the one Triton would pick. Triton's own path is taken
    under the interpreter, while a launch hook is installed (profilers), and for calls that
    leave a parameter to its default. Without hooks it passes no launch metadata and no hooks,
    where Triton 3.6 builds the metadata and calls its empty hook chains on every launch.
    """

    MAX_ENTRIES = 4096

    def __init__(self, fn: triton.runtime.JITFunction) -> None:
        self.fn = fn
        self.kernels: dict[tuple, tuple] = {}
        # Under TRITON_INTERPRET=1 (read when the kernel was defined) triton.jit made an
        # interpreted function: nothing is compiled or kept.
        self.cacheable = _CACHEABLE and not isinstance(fn, InterpretedFunction)

    def __getitem__(self, grid: tuple[int, ...]):
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def launch(self, grid: tuple[int, ...], args: tuple, kwargs: dict) -> None:
        if not self.cacheable or _hooked():
            self.fn[grid](*args, **kwargs)
            return
        driver = triton.runtime.driver.active
        device = driver.get_current_device()
        key = (
            device,
            triton.knobs.runtime.debug,
            triton.knobs.compilation.instrumentation_mode,
            *kwargs.items(),
            *((a.dtype, a.data_ptr() % 16) if isinstance(a, torch.Tensor) else a for a in args),
        )
        cached = self.kernels.get(key)
        if cached is None:
            kernel = self.fn[grid](*args, **kwargs)
            tail = self.fn.arg_names[len(args) :]
            if len(self.kernels) >= self.MAX_ENTRIES:
                self.kernels.clear()
            # Parameters left to their defaults would need Triton's binding: never cached.
            self.kernels[key] = (kernel, tail) if all(n in kwargs for n in tail) else (None, tail)
            return
        kernel, tail = cached
        if kernel is None:
            self.fn[grid](*args, **kwargs)
            return
        grid_1 = grid[1] if len(grid) > 1 else 1
        grid_2 = grid[2] if len(grid) > 2 else 1
        kernel.run(
            grid[0], grid_1, grid_2, driver.get_current_stream(device), kernel.function,
            kernel.packed_metadata, None, None, None, *args, *(kwargs[n] for n in tail),
        )  # fmt: skip
