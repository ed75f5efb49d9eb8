"""``mambaverse bench kernels``: each kernel op against its peers, ratios from one run.

Peers (DESIGN.md section 7): the device's measured copy bandwidth (the floor of a memory-bound
kernel), a PyTorch loop over time steps, the Mamba reference Triton SSD kernel
(``mamba_chunk_scan_combined``, imported from ``--peer-path`` when present), and torch's
``scaled_dot_product_attention`` with its flash and cuDNN backends. Times are medians of
``triton.testing.do_bench`` (CUDA events) after warm-up, on fresh random inputs.

For ``causal_conv1d`` the peer is the reference path (``F.conv1d`` with d groups, in fp32 with
casts around it); x is passed as the Mamba block passes it, a channels-innermost slice of its
input projection.

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
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SS_SHAPE = {"batch": 4, "dim": 1536, "dstate": 16}
SS_LENGTHS = (2048, 8192, 16384)
SSD_SHAPE = {"batch": 4, "length": 4096, "heads": 32, "headdim": 64, "dstate": 128, "chunk": 256}
ATTN_TOKENS, ATTN_WIDTH = 16384, 2048  # batch = tokens / length, heads = width / head_dim
ATTN_HEAD_DIMS = (64, 128)
ATTN_LENGTHS = (2048, 4096, 8192, 16384)
CONV_SHAPE = {"batch": 8, "dim": 1536, "width": 4}  # the Mamba-130m block at 16k tokens / step
CONV_LENGTHS = (2048, 8192)
OPS = ("selective_scan", "ssd_scan", "attention", "causal_conv1d")


@dataclass
class Row:
    op: str
    shape: str
    pass_: str  # "fwd" or "fwd+bwd"
    impl: str
    ms: float
    achieved: float  # GB/s or TFLOP/s
    unit: str
    ratios: dict[str, float] = field(default_factory=dict)  # name -> value, named for reading


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {OPS}")
    parser.add_argument("--quick", action="store_true", help="one shape per op (smoke run)")
    parser.add_argument(
        "--peer-path",
        default=".peer",
        help="folder holding the mamba_ssm package for the SSD peer (not shipped with mambaverse)",
    )


# -- measuring ----------------------------------------------------------------------------------
def median_ms(fn: Callable[[], Any]) -> float:
    import triton

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def wall_ms(fn: Callable[[], Any]) -> float:
    """One timed call (for peers too slow to repeat), synchronised on both sides."""
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def copy_bandwidth() -> float:
    """Device-to-device copy of 2 GiB, bytes read plus written, in GB/s."""
    import torch

    src = torch.randn(2**28, device="cuda")  # 1 GiB of fp32
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / median_ms(lambda: dst.copy_(src)) / 1e6


def matmul_rate() -> float:
    """bf16 8192³ matrix product on random data, TFLOP/s."""
    import torch

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return 2 * 8192**3 / median_ms(lambda: a @ b) / 1e9


def fwd_bwd(fn: Callable[[], Any], inputs: list[Any]) -> Callable[[], Any]:
    """One forward and backward with a fixed random output gradient."""
    import torch

    out = fn()
    out = out[0] if isinstance(out, tuple) else out
    grad = torch.randn_like(out)
    wanted = [t for t in inputs if t is not None and t.requires_grad]

    def step():
        y = fn()
        y = y[0] if isinstance(y, tuple) else y
        return torch.autograd.grad(y, wanted, grad)

    return step


# -- selective scan -----------------------------------------------------------------------------
SS_LAYOUTS = ("contiguous", "Mamba block")


def _ss_inputs(batch: int, dim: int, dstate: int, length: int, layout: str) -> dict[str, Any]:
    """Mamba-1 block inputs: δ bias and softplus as in the Mamba mixer, gate z, skip D.

    layout "contiguous": every (b, d, l) and (b, n, l) tensor contiguous. "Mamba block": as the
    Mamba mixer passes them — u, z halves of a (b, l, 2d) projection, δ a (b, l, d) one, B and C
    slices of a (b, l, dt_rank + 2n) one, all transposed (channels innermost)."""
    import torch

    dev, bf16 = "cuda", torch.bfloat16
    if layout == "contiguous":
        u, z, delta = (torch.randn(batch, dim, length, device=dev, dtype=bf16) for _ in range(3))
        B, C = (torch.randn(batch, dstate, length, device=dev, dtype=bf16) for _ in range(2))
    else:
        u, z = (
            torch.randn(batch, length, 2 * dim, device=dev, dtype=bf16).transpose(1, 2).chunk(2, 1)
        )
        delta = torch.randn(batch, length, dim, device=dev, dtype=bf16).transpose(1, 2)
        rank = -(-dim // 32)  # mamba's dt_rank for d_model = dim / 2
        x_dbl = torch.randn(batch, length, rank + 2 * dstate, device=dev, dtype=bf16)
        B, C = (
            x_dbl[..., rank + i * dstate : rank + (i + 1) * dstate].movedim(1, -1) for i in (0, 1)
        )
    inputs = {
        "u": u,
        "delta": delta * 0.5 - 3.0,
        "A": -torch.rand(dim, dstate, device=dev) * 4 - 0.5,
        "B": B,
        "C": C,
        "D": torch.randn(dim, device=dev),
        "z": z,
        "delta_bias": torch.rand(dim, device=dev),
    }
    return {name: t.detach().requires_grad_() for name, t in inputs.items()}


def _ss_loop(u, delta, A, B, C, D, z, delta_bias):
    """The PyTorch peer: one small kernel chain per time step, in fp32."""
    import torch
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


def bench_selective_scan(copy_gbs: float, quick: bool) -> list[Row]:
    """Triton against the reference and the loop (contiguous inputs), then Triton again on the
    inputs as the Mamba block lays them out, against the same peers' times."""
    import torch

    import mambaverse

    batch, dim, dstate = SS_SHAPE["batch"], SS_SHAPE["dim"], SS_SHAPE["dstate"]
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    rows = []
    for length in SS_LENGTHS[:1] if quick else SS_LENGTHS:
        big, small = batch * dim * length * 2, batch * dstate * length * 2  # bytes of one tensor
        fwd_bytes = 4 * big + 2 * small  # u, δ, z, B, C in; y out
        bwd_bytes = 7 * big + 4 * small  # + dout in; du, dδ, dz, dB, dC out
        n_bytes = {"fwd": fwd_bytes, "fwd+bwd": fwd_bytes + bwd_bytes}
        peers: dict[str, float] = {}
        for layout in SS_LAYOUTS:
            x = _ss_inputs(batch, dim, dstate, length, layout)
            args = [x[k] for k in names]
            shape = f"b{batch} d{dim} n{dstate} l{length} bf16 {layout}"
            impls = ("triton", "reference") if layout == "contiguous" else ("triton",)
            times = {}
            for impl in impls:
                kernel = mambaverse.get_kernel("selective_scan", impl, "cuda", torch.bfloat16)

                def fwd(kernel=kernel, args=args):
                    return kernel(*args, delta_softplus=True)

                with torch.no_grad():
                    times[impl, "fwd"] = median_ms(fwd)
                times[impl, "fwd+bwd"] = median_ms(fwd_bwd(fwd, args))
            if layout == "contiguous":  # the peers, timed once per length
                with torch.no_grad():
                    peers["loop"] = wall_ms(lambda args=args: _ss_loop(*args))
                peers.update({f"reference {p}": times["reference", p] for p in n_bytes})
                for pass_, n in n_bytes.items():
                    t = times["reference", pass_]
                    rows.append(
                        Row("selective_scan", shape, pass_, "reference", t, n / t / 1e6, "GB/s")
                    )
                loop_ms = peers["loop"]
                rows.append(
                    Row("selective_scan", shape, "fwd", "torch loop", loop_ms,
                        fwd_bytes / loop_ms / 1e6, "GB/s")
                )  # fmt: skip
            t_fwd, t_both = times["triton", "fwd"], times["triton", "fwd+bwd"]
            rows.append(
                Row("selective_scan", shape, "fwd", "triton", t_fwd, fwd_bytes / t_fwd / 1e6,
                    "GB/s",
                    {"of copy bandwidth": fwd_bytes / t_fwd / 1e6 / copy_gbs,
                     "x faster than torch loop": peers["loop"] / t_fwd,
                     "x faster than reference": peers["reference fwd"] / t_fwd})
            )  # fmt: skip
            rows.append(
                Row("selective_scan", shape, "fwd+bwd", "triton", t_both,
                    n_bytes["fwd+bwd"] / t_both / 1e6, "GB/s",
                    {"fwd+bwd / fwd time": t_both / t_fwd,
                     "x faster than reference": peers["reference fwd+bwd"] / t_both})
            )  # fmt: skip
    return rows


# -- causal convolution ------------------------------------------------------------------------------
def bench_causal_conv1d(copy_gbs: float, quick: bool) -> list[Row]:
    import torch

    import mambaverse

    batch, dim, width = CONV_SHAPE["batch"], CONV_SHAPE["dim"], CONV_SHAPE["width"]
    rows = []
    for length in CONV_LENGTHS[:1] if quick else CONV_LENGTHS:
        # x as the Mamba block's: the first half of a (b, l, 2d) projection, transposed.
        xz = torch.randn(batch, length, 2 * dim, device="cuda", dtype=torch.bfloat16)
        x = xz[..., :dim].transpose(1, 2).detach().requires_grad_()
        weight = torch.randn(dim, width, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        bias = torch.randn(dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        shape = f"b{batch} d{dim} w{width} l{length} bf16 silu"
        one = batch * dim * length * 2  # bytes of x
        n_bytes = {"fwd": 2 * one, "fwd+bwd": 5 * one}  # x in, y out; + dy, x in, dx out
        times = {}
        for impl in ("triton", "reference"):
            kernel = mambaverse.get_kernel("causal_conv1d", impl, "cuda", torch.bfloat16)

            def fwd(kernel=kernel, x=x, weight=weight, bias=bias):
                return kernel(x, weight, bias=bias, activation="silu")

            with torch.no_grad():
                times[impl, "fwd"] = median_ms(fwd)
            times[impl, "fwd+bwd"] = median_ms(fwd_bwd(fwd, [x, weight, bias]))
        for (impl, pass_), t in times.items():
            achieved = n_bytes[pass_] / t / 1e6
            ratios = {}
            if impl == "triton":
                ratios = {"of copy bandwidth": achieved / copy_gbs,
                          "x faster than reference": times["reference", pass_] / t}  # fmt: skip
            rows.append(Row("causal_conv1d", shape, pass_, impl, t, achieved, "GB/s", ratios))
    return rows


# -- SSD ------------------------------------------------------------------------------------------
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


def bench_ssd_scan(peer_path: str) -> list[Row]:
    import torch

    import mambaverse

    s = SSD_SHAPE
    batch, length, heads, headdim, dstate = (
        s[k] for k in ("batch", "length", "heads", "headdim", "dstate")
    )
    dev, bf16 = "cuda", torch.bfloat16
    x = {
        "x": torch.randn(batch, length, heads, headdim, device=dev, dtype=bf16),
        "dt": torch.randn(batch, length, heads, device=dev, dtype=bf16) * 0.5 - 2.0,
        "A": -torch.rand(heads, device=dev) * 8 - 1,
        "B": torch.randn(batch, length, 1, dstate, device=dev, dtype=bf16),
        "C": torch.randn(batch, length, 1, dstate, device=dev, dtype=bf16),
        "D": torch.randn(heads, device=dev),
        "dt_bias": torch.rand(heads, device=dev),
    }
    for t in x.values():
        t.requires_grad_()
    args = [x[k] for k in ("x", "dt", "A", "B", "C")]
    extra = {"D": x["D"], "dt_bias": x["dt_bias"], "dt_softplus": True}
    chunk = s["chunk"]
    impls: dict[str, Callable[[], Any]] = {}
    ours = mambaverse.get_kernel("ssd_scan", "triton", dev, bf16)
    impls["triton"] = lambda: ours(*args, chunk, **extra)
    peer = _mamba_peer(peer_path)
    if peer is not None:
        impls["mamba_chunk_scan_combined"] = lambda: peer(*args, chunk, **extra)
    # Matmul work of the chunked algorithm (intra-chunk causal half + state passing), and bytes.
    flops_fwd = (
        batch * heads * length * (2 * chunk * (dstate + headdim) / 2 * 2 + 4 * headdim * dstate)
    )
    shape = f"b{batch} l{length} h{heads} p{headdim} n{dstate} g1 chunk{chunk} bf16"
    times = {}
    for name, fn in impls.items():
        with torch.no_grad():
            times[name, "fwd"] = median_ms(fn)
        times[name, "fwd+bwd"] = median_ms(fwd_bwd(fn, [*args, x["D"], x["dt_bias"]]))
    rows = []
    for pass_, flops in (("fwd", flops_fwd), ("fwd+bwd", 3.5 * flops_fwd)):
        for name in impls:
            t = times[name, pass_]
            ratios = {}
            if name == "triton" and peer is not None:
                ratios["x faster than mamba_chunk_scan_combined"] = (
                    times["mamba_chunk_scan_combined", pass_] / t
                )
            rows.append(Row("ssd_scan", shape, pass_, name, t, flops / t / 1e9, "TFLOP/s", ratios))
    return rows


# -- attention ------------------------------------------------------------------------------------
def bench_attention(quick: bool) -> list[Row]:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import mambaverse

    ours = mambaverse.get_kernel("attention", "triton", "cuda", torch.bfloat16)
    backends = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}
    rows = []
    dims = ATTN_HEAD_DIMS[:1] if quick else ATTN_HEAD_DIMS
    lengths = ATTN_LENGTHS[:1] if quick else ATTN_LENGTHS
    for head_dim in dims:
        for length in lengths:
            for causal in (False, True):
                batch, heads = ATTN_TOKENS // length, ATTN_WIDTH // head_dim
                qkv = [
                    torch.randn(
                        batch, heads, length, head_dim, device="cuda", dtype=torch.bfloat16
                    ).requires_grad_()
                    for _ in range(3)
                ]
                fns = {"triton": lambda qkv=qkv, causal=causal: ours(*qkv, causal=causal)}
                for name, backend in backends.items():

                    def sdpa(qkv=qkv, causal=causal, backend=backend):
                        with sdpa_kernel(backend):
                            return F.scaled_dot_product_attention(*qkv, is_causal=causal)

                    fns[name] = sdpa
                flops_fwd = 4 * batch * heads * length * length * head_dim / (2 if causal else 1)
                shape = (
                    f"b{batch} h{heads} l{length} d{head_dim} {'causal' if causal else 'full'} bf16"
                )
                times = {}
                for name, fn in fns.items():
                    try:
                        with torch.no_grad():
                            times[name, "fwd"] = median_ms(fn)
                        times[name, "fwd+bwd"] = median_ms(fwd_bwd(fn, qkv))
                    except RuntimeError as err:  # a backend that refuses this shape
                        print(f"attention {shape} {name}: {err}".splitlines()[0], file=sys.stderr)
                for pass_, flops in (("fwd", flops_fwd), ("fwd+bwd", 3.5 * flops_fwd)):
                    for name in fns:
                        if (name, pass_) not in times:
                            continue
                        t = times[name, pass_]
                        ratios = {}
                        if name == "triton":
                            ratios = {
                                f"x {peer} TFLOP/s": times[peer, pass_] / t
                                for peer in backends
                                if (peer, pass_) in times
                            }
                        rows.append(
                            Row(
                                "attention",
                                shape,
                                pass_,
                                name,
                                t,
                                flops / t / 1e9,
                                "TFLOP/s",
                                ratios,
                            )
                        )
    return rows


# -- output ---------------------------------------------------------------------------------------
def print_table(rows: list[Row]) -> None:
    from rich.table import Table

    from ..cli_catalogue import console

    table = Table("op", "shape", "pass", "impl", "median ms", "achieved", "ratio (same run)")
    for r in rows:
        ratios = "; ".join(f"{v:.2f} {k}" for k, v in r.ratios.items())
        table.add_row(
            r.op, r.shape, r.pass_, r.impl, f"{r.ms:.4f}", f"{r.achieved:.0f} {r.unit}", ratios
        )
    console().print(table)


def plot(rows: list[Row], path: Path) -> None:
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
            values = {f"{r.shape}\n{r.pass_}": r.achieved for r in mine if r.impl == impl}
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
    import torch
    import triton

    from ..errors import KernelUnavailableError

    if not torch.cuda.is_available():
        raise KernelUnavailableError(
            "bench kernels measures CUDA kernels; no CUDA device is visible"
        )
    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        raise KernelUnavailableError(f"unknown op(s) {unknown}; choose from {', '.join(OPS)}")
    torch.manual_seed(0)
    ceilings = {"copy GB/s": copy_bandwidth(), "bf16 matmul TFLOP/s": matmul_rate()}
    print(f"device ceilings: {ceilings['copy GB/s']:.0f} GB/s copy, "
          f"{ceilings['bf16 matmul TFLOP/s']:.0f} TFLOP/s bf16 matmul")  # fmt: skip
    rows: list[Row] = []
    if "selective_scan" in ops:
        rows += bench_selective_scan(ceilings["copy GB/s"], args.quick)
    if "ssd_scan" in ops:
        rows += bench_ssd_scan(args.peer_path)
    if "attention" in ops:
        rows += bench_attention(args.quick)
    if "causal_conv1d" in ops:
        rows += bench_causal_conv1d(ceilings["copy GB/s"], args.quick)
    print_table(rows)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": "mambaverse bench kernels " + " ".join(sys.argv[3:]),
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "ceilings": ceilings,
        "rows": [asdict(r) for r in rows],
    }
    (out / "kernels.json").write_text(json.dumps(record, indent=2))
    plot(rows, out / "kernels.png")
    print(f"wrote {out / 'kernels.json'} and {out / 'kernels.png'}")
    return 0
