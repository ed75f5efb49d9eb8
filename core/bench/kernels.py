"""``mambaverse bench kernels``: each kernel op against its peers, ratios from one run.

Peers (DESIGN.md section 7): the device's measured copy bandwidth (the floor of a memory-bound
kernel), a PyTorch loop over time steps, the Mamba reference Triton SSD kernel
(``mamba_chunk_scan_combined``, imported from ``--peer-path`` when present, CUDA only), and
torch's ``scaled_dot_product_attention`` (on CUDA with its flash and cuDNN backends). On CUDA
times are medians of ``triton.testing.do_bench`` (CUDA events) after warm-up, on fresh random
inputs; on the CPU medians of a few calls on the host's clock.

``--smoke`` runs every op at tiny shapes: on the CPU one call each, the reference paths and the
Triton kernels too when ``TRITON_INTERPRET=1`` is set (their rows are marked skipped otherwise);
on CUDA the same shapes through ``do_bench``. Its times say nothing about speed; it checks that
every path of the suite runs.

For ``causal_conv1d`` the peer is the reference path (``F.conv1d`` with d groups, in fp32 with
casts around it); x is passed as the Mamba block passes it, a channels-innermost slice of its
input projection. For ``gated_rms_norm`` (Mamba-2's output norm) the peer is the reference path
(torch's composite in fp32, what the block ran before the kernel), z a slice of the projection.
For ``apply_rotary`` the peer is the reference path too (the rotation in fp32 PyTorch), on the
queries of the bench's 130m Transformer as its attention passes them (a transposed view of the
(b, l, heads, head_dim) projection). For ``cross_entropy`` the peer is the reference path
(torch's loss on a float32 copy of the logits), on the bench's 130m models' logits at 16k tokens.

The selective scan is measured on contiguous inputs and on inputs laid out as the Mamba block
passes them (transposed slices of its projections, channels innermost); the peers run once, on
the contiguous ones.

Counting: a scan's minimum bytes read every input once and write every output once; attention
counts 4·b·h·lq·lk·d FLOPs forward (half when causal) and 2.5× that backward, the FlashAttention
convention, so forward+backward is 3.5× the forward count.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .measure import OK, SKIPPED, time_calls
from .report import add_device_options, describe_device, resolve_device

OPS = (
    "selective_scan",
    "ssd_scan",
    "attention",
    "causal_conv1d",
    "gated_rms_norm",
    "apply_rotary",
    "cross_entropy",
)
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


@dataclass(frozen=True)
class Sizes:
    """The shapes each op is measured at. Attention: batch = tokens / length, heads = width /
    head_dim. The ceilings: a copy of ``copy_elems`` fp32 values, a ``matmul_n``³ product."""

    ss: dict[str, int]
    ss_lengths: tuple[int, ...]
    ssd: dict[str, int]
    attn_tokens: int
    attn_width: int
    attn_head_dims: tuple[int, ...]
    attn_lengths: tuple[int, ...]
    conv: dict[str, int]
    conv_lengths: tuple[int, ...]
    norm: dict[str, int]
    norm_lengths: tuple[int, ...]
    rotary: dict[str, int]
    rotary_lengths: tuple[int, ...]
    loss: dict[str, int]
    copy_elems: int
    matmul_n: int


FULL = Sizes(
    ss={"batch": 4, "dim": 1536, "dstate": 16},
    ss_lengths=(2048, 8192, 16384),
    ssd={"batch": 4, "length": 4096, "heads": 32, "headdim": 64, "dstate": 128, "chunk": 256},
    attn_tokens=16384,
    attn_width=2048,
    attn_head_dims=(64, 128),
    attn_lengths=(2048, 4096, 8192, 16384),
    conv={"batch": 8, "dim": 1536, "width": 4},  # the Mamba-130m block at 16k tokens / step
    conv_lengths=(2048, 8192),
    norm={"batch": 8, "dim": 1536, "groups": 1},  # Mamba-2 130m's output norm, 16k tokens / step
    norm_lengths=(2048,),
    rotary={"tokens": 16384, "heads": 12, "head_dim": 64},  # the bench Transformer-130m's q
    rotary_lengths=(4096,),
    loss={"tokens": 16384, "vocab": 50280},  # the bench 130m models' logits at 16k tokens
    copy_elems=2**28,  # 1 GiB
    matmul_n=8192,
)
# CPU seconds: the reference paths timed, the Triton kernels interpreted (TRITON_INTERPRET=1).
SMOKE = Sizes(
    ss={"batch": 1, "dim": 8, "dstate": 4},
    ss_lengths=(24,),
    ssd={"batch": 1, "length": 40, "heads": 2, "headdim": 8, "dstate": 8, "chunk": 16},
    attn_tokens=48,
    attn_width=64,
    attn_head_dims=(32,),
    attn_lengths=(24,),
    conv={"batch": 1, "dim": 8, "width": 4},
    conv_lengths=(24,),
    norm={"batch": 1, "dim": 12, "groups": 3},
    norm_lengths=(5,),
    rotary={"tokens": 14, "heads": 2, "head_dim": 6},
    rotary_lengths=(7,),
    loss={"tokens": 6, "vocab": 21},
    copy_elems=2**20,
    matmul_n=256,
)


@dataclass
class Row:
    op: str
    shape: str
    pass_: str  # "fwd" or "fwd+bwd"
    impl: str
    ms: float | None
    achieved: float | None  # GB/s or TFLOP/s
    unit: str
    ratios: dict[str, float] = field(default_factory=dict)  # name -> value, named for reading
    status: str = OK


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {OPS}")
    parser.add_argument("--quick", action="store_true", help="one shape per op")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny shapes, a smoke test (on the CPU one call each: the reference paths, and the "
        "Triton kernels when TRITON_INTERPRET=1 is set)",
    )
    add_device_options(parser)  # the activations' device and dtype
    parser.add_argument(
        "--peer-path",
        default=".peer",
        help="folder holding the mamba_ssm package for the SSD peer (not shipped with mambaverse)",
    )


# -- measuring ----------------------------------------------------------------------------------
@dataclass
class Bench:
    """Where and how one run measures: device, activations' dtype, sizes, and the clock."""

    device: torch.device
    dtype: torch.dtype
    sizes: Sizes
    quick: bool = False
    few_calls: tuple[int, int] = (1, 3)  # (warm-up, timed) calls of few_calls_ms

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype]

    def first_if_quick(self, values: tuple[int, ...]) -> tuple[int, ...]:
        return values[:1] if self.quick else values

    def randn(self, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.randn(*shape, device=self.device, dtype=dtype or self.dtype)

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) parameters, fp32 as the models keep them."""
        return torch.rand(*shape, device=self.device)

    def median_ms(self, fn: Callable[[], Any]) -> float:
        """CUDA: ``triton.testing.do_bench``'s median (CUDA events, 25 ms warm-up, 100 ms of
        calls). Elsewhere: :meth:`few_calls_ms`."""
        if self.device.type == "cuda":
            import triton

            return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
        return self.few_calls_ms(fn)

    def few_calls_ms(self, fn: Callable[[], Any]) -> float:
        """The median of ``few_calls`` (warm-up, timed) calls on the device's clock: for the
        CPU, and for peers too slow to repeat for 100 ms (the loop over time)."""
        warmup, repeats = self.few_calls
        for _ in range(warmup):
            fn()
        return statistics.median(time_calls(fn, self.device, repeats))

    def unusable(self, impl: str) -> str | None:
        """Why ``impl`` cannot run here, or None."""
        if impl != "triton":
            return None
        if importlib.util.find_spec("triton") is None:
            return f"{SKIPPED}: Triton is not installed"
        from mambaverse.kernels.triton_support import interpreting

        if self.device.type == "cpu" and not interpreting():
            return f"{SKIPPED}: set TRITON_INTERPRET=1 to interpret Triton on the CPU"
        return None


def copy_bandwidth(bench: Bench) -> float:
    """Copy of ``copy_elems`` fp32 values, bytes read plus written, in GB/s."""
    src = bench.randn(bench.sizes.copy_elems, dtype=torch.float32)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / bench.median_ms(lambda: dst.copy_(src)) / 1e6


def matmul_rate(bench: Bench) -> float:
    """``matmul_n``³ product in the run's dtype on random data, TFLOP/s."""
    n = bench.sizes.matmul_n
    a, b = bench.randn(n, n), bench.randn(n, n)
    return 2 * n**3 / bench.median_ms(lambda: a @ b) / 1e9


def fwd_bwd(fn: Callable[[], Any], inputs: list[Any]) -> Callable[[], Any]:
    """One forward and backward with a fixed random output gradient."""
    out = fn()
    out = out[0] if isinstance(out, tuple) else out
    grad = torch.randn_like(out)
    wanted = [t for t in inputs if t is not None and t.requires_grad]

    def step():
        y = fn()
        y = y[0] if isinstance(y, tuple) else y
        return torch.autograd.grad(y, wanted, grad)

    return step


def _pass_timers(
    bench: Bench, fn: Callable[[], Any], inputs: list[Any]
) -> dict[str, Callable[[], float]]:
    """pass -> a function timing it: the forward without autograd, forward+backward."""

    def forward() -> float:
        with torch.no_grad():
            return bench.median_ms(fn)

    return {"fwd": forward, "fwd+bwd": lambda: bench.median_ms(fwd_bwd(fn, inputs))}


def time_passes(bench: Bench, fn: Callable[[], Any], inputs: list[Any]) -> dict[str, float]:
    """Median ms of the forward (no autograd) and of forward+backward."""
    return {pass_: timer() for pass_, timer in _pass_timers(bench, fn, inputs).items()}


def time_passes_if_run(
    bench: Bench, fn: Callable[[], Any], inputs: list[Any], label: str
) -> dict[str, float]:
    """:func:`time_passes` for a peer that may refuse a shape: a pass that raises is left out
    (and said on stderr), the other is kept."""
    times = {}
    for pass_, timer in _pass_timers(bench, fn, inputs).items():
        try:
            times[pass_] = timer()
        except RuntimeError as err:
            print(f"{label} {pass_}: {err}".splitlines()[0], file=sys.stderr)
    return times


def not_run(op: str, shape: str, impl: str, unit: str, status: str) -> list[Row]:
    """The rows of an implementation that could not run here, both passes, with the reason."""
    return [Row(op, shape, p, impl, None, None, unit, status=status) for p in ("fwd", "fwd+bwd")]


# -- selective scan -----------------------------------------------------------------------------
SS_LAYOUTS = ("contiguous", "Mamba block")
SS_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _ss_inputs(bench: Bench, length: int, layout: str) -> dict[str, torch.Tensor]:
    """Mamba-1 block inputs: δ bias and softplus as in the Mamba mixer, gate z, skip D.

    layout "contiguous": every (b, d, l) and (b, n, l) tensor contiguous. "Mamba block": as the
    Mamba mixer passes them — u, z halves of a (b, l, 2d) projection, δ a (b, l, d) one, B and C
    slices of a (b, l, dt_rank + 2n) one, all transposed (channels innermost)."""
    batch, dim, dstate = (bench.sizes.ss[k] for k in ("batch", "dim", "dstate"))
    if layout == "contiguous":
        u, z, delta = (bench.randn(batch, dim, length) for _ in range(3))
        B, C = (bench.randn(batch, dstate, length) for _ in range(2))
    else:
        u, z = bench.randn(batch, length, 2 * dim).transpose(1, 2).chunk(2, 1)
        delta = bench.randn(batch, length, dim).transpose(1, 2)
        rank = -(-dim // 32)  # mamba's dt_rank for d_model = dim / 2
        x_dbl = bench.randn(batch, length, rank + 2 * dstate)
        B, C = (
            x_dbl[..., rank + i * dstate : rank + (i + 1) * dstate].movedim(1, -1) for i in (0, 1)
        )
    inputs = {
        "u": u,
        "delta": delta * 0.5 - 3.0,
        "A": -bench.rand(dim, dstate) * 4 - 0.5,
        "B": B,
        "C": C,
        "D": bench.randn(dim, dtype=torch.float32),
        "z": z,
        "delta_bias": bench.rand(dim),
    }
    return {name: t.detach().requires_grad_() for name, t in inputs.items()}


def _ss_loop(u, delta, A, B, C, D, z, delta_bias):
    """The PyTorch peer: one small kernel chain per time step, in fp32."""
    import torch.nn.functional as F

    delta = F.softplus(delta.float() + delta_bias[:, None])
    u, B, C = u.float(), B.float(), C.float()
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], device=u.device)
    ys = []
    for t in range(u.shape[2]):
        h = (
            torch.exp(delta[:, :, t, None] * A) * h
            + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        )
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, -1) + D[:, None] * u
    return y * F.silu(z.float())


def bench_selective_scan(bench: Bench, copy_gbs: float) -> list[Row]:
    """Triton against the reference and the loop (contiguous inputs), then Triton again on the
    inputs as the Mamba block lays them out, against the same peers' times."""
    import mambaverse

    op = "selective_scan"
    batch, dim, dstate = (bench.sizes.ss[k] for k in ("batch", "dim", "dstate"))
    size = bench.dtype.itemsize
    rows = []
    for length in bench.first_if_quick(bench.sizes.ss_lengths):
        big, small = batch * dim * length * size, batch * dstate * length * size  # one tensor
        fwd_bytes = 4 * big + 2 * small  # u, δ, z, B, C in; y out
        bwd_bytes = 7 * big + 4 * small  # + dout in; du, dδ, dz, dB, dC out
        n_bytes = {"fwd": fwd_bytes, "fwd+bwd": fwd_bytes + bwd_bytes}
        peers: dict[str, float] = {}
        for layout in SS_LAYOUTS:
            x = _ss_inputs(bench, length, layout)
            args = [x[k] for k in SS_NAMES]
            shape = f"b{batch} d{dim} n{dstate} l{length} {bench.dtype_name} {layout}"
            impls = ("triton", "reference") if layout == "contiguous" else ("triton",)
            times = {}
            for impl in impls:
                if reason := bench.unusable(impl):
                    rows += not_run(op, shape, impl, "GB/s", reason)
                    continue
                kernel = mambaverse.get_kernel(op, impl, bench.device, bench.dtype)

                def fwd(kernel=kernel, args=args):
                    return kernel(*args, delta_softplus=True)

                times[impl] = time_passes(bench, fwd, args)
            if layout == "contiguous":  # the peers, timed once per length
                with torch.no_grad():
                    peers["loop"] = bench.few_calls_ms(lambda args=args: _ss_loop(*args))
                peers.update({f"reference {p}": t for p, t in times["reference"].items()})
                for pass_, n in n_bytes.items():
                    t = times["reference"][pass_]
                    rows.append(Row(op, shape, pass_, "reference", t, n / t / 1e6, "GB/s"))
                loop_ms = peers["loop"]
                rows.append(
                    Row(op, shape, "fwd", "torch loop", loop_ms, fwd_bytes / loop_ms / 1e6, "GB/s")
                )
            if "triton" not in times:
                continue
            t_fwd, t_both = times["triton"]["fwd"], times["triton"]["fwd+bwd"]
            rows.append(
                Row(op, shape, "fwd", "triton", t_fwd, fwd_bytes / t_fwd / 1e6, "GB/s",
                    {"of copy bandwidth": fwd_bytes / t_fwd / 1e6 / copy_gbs,
                     "x faster than torch loop": peers["loop"] / t_fwd,
                     "x faster than reference": peers["reference fwd"] / t_fwd})
            )  # fmt: skip
            rows.append(
                Row(op, shape, "fwd+bwd", "triton", t_both, n_bytes["fwd+bwd"] / t_both / 1e6,
                    "GB/s",
                    {"fwd+bwd / fwd time": t_both / t_fwd,
                     "x faster than reference": peers["reference fwd+bwd"] / t_both})
            )  # fmt: skip
    return rows


# -- causal convolution ------------------------------------------------------------------------------
def _against_reference(
    bench: Bench,
    op: str,
    shape: str,
    fwd: Callable[[Callable[..., Any]], Any],
    inputs: list[torch.Tensor],
    n_bytes: dict[str, int],
    copy_gbs: float,
) -> list[Row]:
    """A memory-bound op's Triton kernel and reference path on the same inputs: achieved GB/s
    over ``n_bytes`` (pass -> minimum bytes), Triton's share of the copy bandwidth and its
    speed-up over the reference. ``fwd(kernel)`` calls the op's implementation ``kernel``."""
    import mambaverse

    rows, times = [], {}
    for impl in ("triton", "reference"):
        if reason := bench.unusable(impl):
            rows += not_run(op, shape, impl, "GB/s", reason)
            continue
        kernel = mambaverse.get_kernel(op, impl, bench.device, bench.dtype)
        times[impl] = time_passes(bench, lambda kernel=kernel: fwd(kernel), inputs)
    for impl, passes in times.items():
        for pass_, t in passes.items():
            achieved = n_bytes[pass_] / t / 1e6
            ratios = {}
            if impl == "triton":
                ratios = {"of copy bandwidth": achieved / copy_gbs,
                          "x faster than reference": times["reference"][pass_] / t}  # fmt: skip
            rows.append(Row(op, shape, pass_, impl, t, achieved, "GB/s", ratios))
    return rows


def bench_causal_conv1d(bench: Bench, copy_gbs: float) -> list[Row]:
    batch, dim, width = (bench.sizes.conv[k] for k in ("batch", "dim", "width"))
    rows = []
    for length in bench.first_if_quick(bench.sizes.conv_lengths):
        # x as the Mamba block's: the first half of a (b, l, 2d) projection, transposed.
        xz = bench.randn(batch, length, 2 * dim)
        x = xz[..., :dim].transpose(1, 2).detach().requires_grad_()
        weight = bench.randn(dim, width).requires_grad_()
        bias = bench.randn(dim).requires_grad_()
        shape = f"b{batch} d{dim} w{width} l{length} {bench.dtype_name} silu"
        one = batch * dim * length * bench.dtype.itemsize  # bytes of x
        n_bytes = {"fwd": 2 * one, "fwd+bwd": 5 * one}  # x in, y out; + dy, x in, dx out
        rows += _against_reference(
            bench, "causal_conv1d", shape,
            lambda kernel, x=x, weight=weight, bias=bias: kernel(x, weight, bias=bias,
                                                                 activation="silu"),
            [x, weight, bias], n_bytes, copy_gbs,
        )  # fmt: skip
    return rows


def bench_gated_rms_norm(bench: Bench, copy_gbs: float) -> list[Row]:
    """Mamba-2's output norm: y from the scan, z a slice of the block's input projection."""
    batch, dim, groups = (bench.sizes.norm[k] for k in ("batch", "dim", "groups"))
    group_size = dim // groups
    rows = []
    for length in bench.first_if_quick(bench.sizes.norm_lengths):
        x = bench.randn(batch, length, dim).requires_grad_()
        z = bench.randn(batch, length, 2 * dim)[..., :dim].detach().requires_grad_()
        weight = (1 + 0.1 * bench.randn(dim, dtype=torch.float32)).requires_grad_()
        shape = f"b{batch} l{length} d{dim} groups {groups} {bench.dtype_name}"
        one = batch * length * dim * bench.dtype.itemsize  # bytes of x
        # x, z in, y out; + dy, x, z in, dx, dz out
        n_bytes = {"fwd": 3 * one, "fwd+bwd": 8 * one}
        rows += _against_reference(
            bench, "gated_rms_norm", shape,
            lambda kernel, x=x, z=z, weight=weight: kernel(x, z, weight, group_size),
            [x, z, weight], n_bytes, copy_gbs,
        )  # fmt: skip
    return rows


def bench_apply_rotary(bench: Bench, copy_gbs: float) -> list[Row]:
    """Rotary embedding of attention's queries: every channel rotated, positions 0..l-1."""
    tokens, heads, head_dim = (bench.sizes.rotary[k] for k in ("tokens", "heads", "head_dim"))
    rows = []
    for length in bench.first_if_quick(bench.sizes.rotary_lengths):
        batch = max(1, tokens // length)
        x = bench.randn(batch, length, heads, head_dim).transpose(1, 2).detach().requires_grad_()
        positions = torch.arange(length, device=bench.device)
        shape = f"b{batch} h{heads} l{length} d{head_dim} {bench.dtype_name}"
        one = x.numel() * bench.dtype.itemsize
        n_bytes = {"fwd": 2 * one, "fwd+bwd": 4 * one}  # x in, out; + dout in, dx out
        rows += _against_reference(
            bench, "apply_rotary", shape,
            lambda kernel, x=x, positions=positions: kernel(x, positions, head_dim, 10000.0),
            [x], n_bytes, copy_gbs,
        )  # fmt: skip
    return rows


def bench_cross_entropy(bench: Bench, copy_gbs: float) -> list[Row]:
    """A language model's loss: (tokens, vocab) logits against random labels."""
    tokens, vocab = bench.sizes.loss["tokens"], bench.sizes.loss["vocab"]
    logits = bench.randn(tokens, vocab).detach().requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), device=bench.device)
    shape = f"n{tokens} v{vocab} {bench.dtype_name}"
    one = logits.numel() * bench.dtype.itemsize
    n_bytes = {"fwd": one, "fwd+bwd": 3 * one}  # logits in; + logits in, their gradient out
    return _against_reference(
        bench, "cross_entropy", shape,
        lambda kernel, logits=logits, labels=labels: kernel(logits, labels, -100),
        [logits], n_bytes, copy_gbs,
    )  # fmt: skip


# -- SSD ------------------------------------------------------------------------------------------
PEER_SSD = "mamba_chunk_scan_combined"


def _mamba_peer(peer_path: str) -> Callable[..., Any] | None:
    """mamba_chunk_scan_combined from a local copy of state-spaces/mamba, or None."""
    path = str(Path(peer_path).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError as err:
        print(f"ssd_scan peer unavailable ({err}); pass --peer-path", file=sys.stderr)
        return None
    return mamba_chunk_scan_combined


def bench_ssd_scan(bench: Bench, peer_path: str) -> list[Row]:
    import mambaverse

    op = "ssd_scan"
    s = bench.sizes.ssd
    batch, length, heads, headdim, dstate, chunk = (
        s[k] for k in ("batch", "length", "heads", "headdim", "dstate", "chunk")
    )
    x = {
        "x": bench.randn(batch, length, heads, headdim),
        "dt": bench.randn(batch, length, heads) * 0.5 - 2.0,
        "A": -bench.rand(heads) * 8 - 1,
        "B": bench.randn(batch, length, 1, dstate),
        "C": bench.randn(batch, length, 1, dstate),
        "D": bench.randn(heads, dtype=torch.float32),
        "dt_bias": bench.rand(heads),
    }
    for t in x.values():
        t.requires_grad_()
    args = [x[k] for k in ("x", "dt", "A", "B", "C")]
    extra = {"D": x["D"], "dt_bias": x["dt_bias"], "dt_softplus": True}
    shape = f"b{batch} l{length} h{heads} p{headdim} n{dstate} g1 chunk{chunk} {bench.dtype_name}"
    rows: list[Row] = []
    impls: dict[str, Callable[[], Any]] = {}
    if reason := bench.unusable("triton"):
        rows += not_run(op, shape, "triton", "TFLOP/s", reason)
    else:
        ours = mambaverse.get_kernel(op, "triton", bench.device, bench.dtype)
        impls["triton"] = lambda: ours(*args, chunk, **extra)
    peer = _mamba_peer(peer_path) if bench.device.type == "cuda" else None
    if peer is not None:
        impls[PEER_SSD] = lambda: peer(*args, chunk, **extra)
    # Matmul work of the chunked algorithm (intra-chunk causal half + state passing), and bytes.
    flops_fwd = (
        batch * heads * length * (2 * chunk * (dstate + headdim) / 2 * 2 + 4 * headdim * dstate)
    )
    times = {
        name: time_passes(bench, fn, [*args, x["D"], x["dt_bias"]]) for name, fn in impls.items()
    }
    for pass_, flops in (("fwd", flops_fwd), ("fwd+bwd", 3.5 * flops_fwd)):
        for name in impls:
            t = times[name][pass_]
            ratios = {}
            if name == "triton" and PEER_SSD in times:
                ratios[f"x faster than {PEER_SSD}"] = times[PEER_SSD][pass_] / t
            rows.append(Row(op, shape, pass_, name, t, flops / t / 1e9, "TFLOP/s", ratios))
    return rows


# -- attention ------------------------------------------------------------------------------------
def _sdpa_peers(device: torch.device) -> dict[str, Any]:
    """torch's SDPA backends to measure beside ours: flash and cuDNN on CUDA, on other devices
    whichever backend torch picks (None)."""
    from torch.nn.attention import SDPBackend

    if device.type == "cuda":
        return {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}
    return {"sdpa": None}


def bench_attention(bench: Bench) -> list[Row]:
    import contextlib

    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    import mambaverse

    op = "attention"
    sizes = bench.sizes
    reason = bench.unusable("triton")
    ours = None if reason else mambaverse.get_kernel(op, "triton", bench.device, bench.dtype)
    backends = _sdpa_peers(bench.device)
    rows = []
    for head_dim in bench.first_if_quick(sizes.attn_head_dims):
        for length in bench.first_if_quick(sizes.attn_lengths):
            for causal in (False, True):
                batch, heads = sizes.attn_tokens // length, sizes.attn_width // head_dim
                qkv = [
                    bench.randn(batch, heads, length, head_dim).requires_grad_() for _ in range(3)
                ]
                kind = "causal" if causal else "full"
                shape = f"b{batch} h{heads} l{length} d{head_dim} {kind} {bench.dtype_name}"
                fns = {}
                if reason:
                    rows += not_run(op, shape, "triton", "TFLOP/s", reason)
                else:
                    fns["triton"] = lambda qkv=qkv, causal=causal: ours(*qkv, causal=causal)
                for name, backend in backends.items():

                    def sdpa(qkv=qkv, causal=causal, backend=backend):
                        chosen = sdpa_kernel(backend) if backend else contextlib.nullcontext()
                        with chosen:
                            return F.scaled_dot_product_attention(*qkv, is_causal=causal)

                    fns[name] = sdpa
                flops_fwd = 4 * batch * heads * length * length * head_dim / (2 if causal else 1)
                times = {
                    name: time_passes_if_run(bench, fn, qkv, f"attention {shape} {name}")
                    for name, fn in fns.items()
                }
                for pass_, flops in (("fwd", flops_fwd), ("fwd+bwd", 3.5 * flops_fwd)):
                    for name, passes in times.items():
                        if pass_ not in passes:  # a backend that refused this shape
                            continue
                        t = passes[pass_]
                        ratios = {}
                        if name == "triton":
                            ratios = {
                                f"x {peer} TFLOP/s": times[peer][pass_] / t
                                for peer in backends
                                if pass_ in times.get(peer, {})
                            }
                        rows.append(
                            Row(op, shape, pass_, name, t, flops / t / 1e9, "TFLOP/s", ratios)
                        )
    return rows


# -- output ---------------------------------------------------------------------------------------
def print_table(rows: list[Row]) -> None:
    from rich.table import Table

    from ..cli_catalogue import console

    table = Table("op", "shape", "pass", "impl", "median ms", "achieved", "ratio (same run)")
    for r in rows:
        if r.status != OK:
            table.add_row(r.op, r.shape, r.pass_, r.impl, "-", "-", r.status)
            continue
        ratios = "; ".join(
            f"{v:.2f} {k}" if v >= 0.01 else f"{v:.2g} {k}" for k, v in r.ratios.items()
        )
        table.add_row(
            r.op, r.shape, r.pass_, r.impl, f"{r.ms:.4f}", f"{_rate(r.achieved)} {r.unit}", ratios
        )
    console().print(table)


def _rate(value: float) -> str:
    """Whole units for device-sized rates (1234 GB/s), three digits for small ones (0.0123)."""
    return f"{value:.0f}" if value >= 10 else f"{value:.3g}"


def plot(rows: list[Row], path: Path) -> None:
    """One bar panel per op: achieved rate of each implementation at each shape and pass (an
    implementation that did not run has no bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [op for op in OPS if any(r.op == op for r in rows)]
    fig, axes = plt.subplots(len(ops), 1, figsize=(14, 4.5 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops):
        mine = [r for r in rows if r.op == op]
        groups = list(dict.fromkeys(f"{r.shape}\n{r.pass_}" for r in mine))
        impls = list(dict.fromkeys(r.impl for r in mine))
        width = 0.8 / len(impls)
        for i, impl in enumerate(impls):
            values = {
                f"{r.shape}\n{r.pass_}": r.achieved
                for r in mine
                if r.impl == impl and r.status == OK
            }
            xs = [g + i * width for g in range(len(groups))]
            ax.bar(xs, [values.get(g, 0.0) for g in groups], width, label=impl)
        ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
        ax.set_xticklabels(groups, fontsize=6, rotation=60, ha="right")
        ax.set_ylabel(mine[0].unit)
        ax.set_title(op)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from ..errors import UnknownNameError, nearest

    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    if not ops:
        raise UnknownNameError(f"--ops names no op; choose from {', '.join(OPS)}")
    for op in ops:
        if op not in OPS:
            close = nearest(op, OPS)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UnknownNameError(f"unknown op {op!r}: {hint}choose from {', '.join(OPS)}")
    device, dtype = resolve_device(args)
    if device.type == "cuda" and device.index is not None:  # cuda:N: Triton and the CUDA
        torch.cuda.set_device(device)  # events work on the current device
    # --smoke: tiny shapes, one call each (a CPU check that every path runs, not a timing)
    sizes, few_calls = (SMOKE, (0, 1)) if args.smoke else (FULL, (1, 3))
    bench = Bench(device, dtype, sizes, args.quick, few_calls)
    torch.manual_seed(0)
    ceilings = {"copy GB/s": copy_bandwidth(bench), "matmul TFLOP/s": matmul_rate(bench)}
    print(f"ceilings of {describe_device(device)}: {_rate(ceilings['copy GB/s'])} GB/s copy, "
          f"{_rate(ceilings['matmul TFLOP/s'])} TFLOP/s {bench.dtype_name} matmul")  # fmt: skip
    rows: list[Row] = []
    if "selective_scan" in ops:
        rows += bench_selective_scan(bench, ceilings["copy GB/s"])
    if "ssd_scan" in ops:
        rows += bench_ssd_scan(bench, args.peer_path)
    if "attention" in ops:
        rows += bench_attention(bench)
    if "causal_conv1d" in ops:
        rows += bench_causal_conv1d(bench, ceilings["copy GB/s"])
    if "gated_rms_norm" in ops:
        rows += bench_gated_rms_norm(bench, ceilings["copy GB/s"])
    if "apply_rotary" in ops:
        rows += bench_apply_rotary(bench, ceilings["copy GB/s"])
    if "cross_entropy" in ops:
        rows += bench_cross_entropy(bench, ceilings["copy GB/s"])
    print_table(rows)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": getattr(args, "command_line", None),
        "date": datetime.date.today().isoformat(),
        "device": describe_device(device),
        "dtype": bench.dtype_name,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "ceilings": ceilings,
        "rows": [asdict(r) for r in rows],
    }
    (out / "kernels.json").write_text(json.dumps(record, indent=2))
    plot(rows, out / "kernels.png")
    print(f"wrote {out / 'kernels.json'} and {out / 'kernels.png'}")
    return 0


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__
