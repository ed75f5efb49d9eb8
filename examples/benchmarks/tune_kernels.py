"""Time the Triton kernels' launch configurations on the GPU, to choose the defaults.

One call of the device does everything: first, several processes with ``--compile-only`` run
each job once (in parallel: they fill Triton's on-disk cache, so compiling costs little device
time); then one process times every job. Every configuration's output is compared with the
first configuration's, so a configuration that miscompiles shows up as an error, not a speed.

    for i in 0 1 2 3; do python tune_kernels.py --compile-only --worker $i --workers 4 & done; wait
    python tune_kernels.py --out results/

The chosen values are written into the kernels' modules by hand; docs/kernels_notes.md keeps
each version's numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import triton

from mambaverse.kernels.attention import triton as attn
from mambaverse.kernels.selective_scan import triton as ss
from mambaverse.kernels.ssd_scan import triton as ssd

BF16 = torch.bfloat16


def median_ms(fn: Callable[[], object]) -> float:
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


# -- jobs: (name, run) where run() returns the tensors a configuration must reproduce ---------------
def selective_scan_jobs() -> list[tuple[str, Callable[[], list[torch.Tensor]]]]:
    jobs = []
    batch, dim, dstate = 4, 1536, 16
    forward = [(4, 8, 1), (4, 16, 1), (8, 8, 1), (2, 16, 1), (4, 4, 1), (8, 16, 1), (16, 8, 2)]
    backward = [(4, 8, 1), (4, 4, 1), (8, 8, 1), (2, 8, 1), (4, 16, 1), (8, 4, 1), (2, 4, 1)]
    inference = [(2, 128, 1), (4, 128, 1), (2, 256, 1), (4, 256, 2), (1, 128, 1), (2, 64, 1)]
    for length in (2048, 16384):
        gen = torch.Generator(device="cuda").manual_seed(0)

        def inputs(length=length, gen=gen):
            def r(*s):
                return torch.randn(*s, device="cuda", generator=gen)

            return dict(
                u=r(batch, dim, length).to(BF16), delta=(r(batch, dim, length) * 0.5 - 3).to(BF16),
                A=-torch.rand(dim, dstate, device="cuda", generator=gen) * 4 - 0.5,
                B=r(batch, dstate, length).to(BF16), C=r(batch, dstate, length).to(BF16),
                D=r(dim), z=r(batch, dim, length).to(BF16), delta_bias=torch.rand(dim, device="cuda"),
            )  # fmt: skip

        cache: dict[str, dict] = {}

        def get(length=length, inputs=inputs, cache=cache):
            if "x" not in cache:
                cache["x"] = inputs()
            return cache["x"]

        for block_d, chunk, warps in forward:
            cfg = ss.LaunchConfig(block_d, chunk, warps)

            def fwd(cfg=cfg, get=get):
                x = get()
                args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
                return lambda: ss._launch_forward(*args, True, False, False, cfg, cfg.chunk)[0]

            jobs.append((f"ss fwd l{length} {cfg}", fwd))
        for block_d, chunk, warps in inference:
            cfg = ss.LaunchConfig(block_d, chunk, warps)

            def infer(cfg=cfg, get=get):
                x = get()
                args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
                return lambda: ss._launch_inference(*args, True, False, cfg)[0]

            jobs.append((f"ss inference l{length} {cfg}", infer))
        for block_d, chunk, warps in backward:
            cfg = ss.LaunchConfig(block_d, chunk, warps)

            def bwd(cfg=cfg, get=get):
                x = get()
                args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
                _, _, ckpt = ss._launch_forward(*args, True, False, True, ss.FORWARD, cfg.chunk)
                dout = torch.randn(
                    x["u"].shape,
                    device="cuda",
                    generator=torch.Generator(device="cuda").manual_seed(3),
                )
                dout = dout.to(BF16)

                def run():
                    g = ss._launch_backward(dout, *args, True, ckpt, cfg, cfg.chunk)
                    return g["u"]

                return run

            jobs.append((f"ss bwd l{length} {cfg}", bwd))
    return jobs


def ssd_jobs(peer_path: str) -> list[tuple[str, Callable[[], Callable[[], torch.Tensor]]]]:
    batch, length, heads, headdim, dstate, chunk = 4, 4096, 32, 64, 128, 256
    cache: dict[str, object] = {}

    def get():
        if "x" not in cache:
            gen = torch.Generator(device="cuda").manual_seed(1)

            def r(*s):
                return torch.randn(*s, device="cuda", generator=gen)

            cache["x"] = dict(
                x=r(batch, length, heads, headdim).to(BF16), dt=(r(batch, length, heads) * 0.5 - 2).to(BF16),
                A=-torch.rand(heads, device="cuda", generator=gen) * 8 - 1,
                B=r(batch, length, 1, dstate).to(BF16), C=r(batch, length, 1, dstate).to(BF16),
                D=r(heads), dt_bias=torch.rand(heads, device="cuda"),
                dout=r(batch, length, heads, headdim).to(BF16),
            )  # fmt: skip
        return cache["x"]

    jobs = []
    configs = [
        (64, 4, 2, 4),
        (64, 8, 2, 4),
        (32, 4, 2, 4),
        (64, 4, 3, 8),
        (128, 8, 2, 4),
        (64, 4, 1, 2),
    ]
    for block, warps, stages, splits in configs:
        cfg = ssd.LaunchConfig(block, warps, stages, splits)

        def fwd(cfg=cfg):
            x = get()
            args = (
                x["x"],
                x["dt"],
                x["A"],
                x["B"],
                x["C"],
                chunk,
                x["D"],
                None,
                x["dt_bias"],
                True,
                None,
            )
            return lambda: ssd._forward(*args, False, True, cfg)[0]

        def bwd(cfg=cfg):
            x = get()
            args = (
                x["x"],
                x["dt"],
                x["A"],
                x["B"],
                x["C"],
                chunk,
                x["D"],
                None,
                x["dt_bias"],
                True,
                None,
            )
            _, _, saved = ssd._forward(*args, False, True, cfg)

            def run():
                g = ssd._backward(x["dout"], None, *args[:5], chunk, x["D"], None, x["dt_bias"], True,
                                  None, saved, cfg)  # fmt: skip
                return g["x"]

            return run

        jobs.append((f"ssd fwd {cfg}", fwd))
        jobs.append((f"ssd bwd {cfg}", bwd))

    sys.path.insert(0, str(Path(peer_path).resolve()))
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as peer

        from mambaverse.bench.kernels import fwd_bwd
    except ImportError as err:
        print(f"no mamba peer: {err}")
        return jobs

    def peer_fwd():
        x = get()
        return lambda: peer(x["x"], x["dt"], x["A"], x["B"], x["C"], chunk, D=x["D"], dt_bias=x["dt_bias"],
                            dt_softplus=True)  # fmt: skip

    def peer_fwd_bwd():
        x = {k: v.detach().clone().requires_grad_() for k, v in get().items() if k != "dout"}
        step = fwd_bwd(lambda: peer(x["x"], x["dt"], x["A"], x["B"], x["C"], chunk, D=x["D"],
                                    dt_bias=x["dt_bias"], dt_softplus=True), list(x.values()))  # fmt: skip
        return lambda: step()[0]

    def ours_fwd_bwd():
        x = {k: v.detach().clone().requires_grad_() for k, v in get().items() if k != "dout"}
        step = fwd_bwd(lambda: ssd.ssd_scan(x["x"], x["dt"], x["A"], x["B"], x["C"], chunk, D=x["D"],
                                            dt_bias=x["dt_bias"], dt_softplus=True), list(x.values()))  # fmt: skip
        return lambda: step()[0]

    jobs += [
        ("ssd peer fwd", peer_fwd),
        ("ssd peer fwd+bwd", peer_fwd_bwd),
        ("ssd ours fwd+bwd", ours_fwd_bwd),
    ]
    return jobs


def attention_jobs() -> list[tuple[str, Callable[[], Callable[[], torch.Tensor]]]]:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    jobs = []
    fwd_cfgs = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4)]
    kv_cfgs = [(64, 128, 8, 3), (64, 64, 4, 3), (32, 128, 8, 3), (64, 128, 4, 2), (128, 64, 8, 2)]
    q_cfgs = [(128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 8, 3), (128, 128, 8, 2)]
    length = 4096
    for head_dim in (64, 128):
        for causal in (False, True):
            batch, heads = 16384 // length, 2048 // head_dim
            key = 64 if head_dim <= 64 else 128
            cache: dict[str, object] = {}

            def get(batch=batch, heads=heads, head_dim=head_dim, cache=cache):
                if "x" not in cache:
                    gen = torch.Generator(device="cuda").manual_seed(2)
                    q, k, v, do = (torch.randn(batch, heads, length, head_dim, device="cuda", generator=gen,
                                               dtype=BF16) for _ in range(4))  # fmt: skip
                    cache["x"] = (q, k, v, do)
                return cache["x"]

            tag = f"d{head_dim} {'causal' if causal else 'full'}"
            for cfg_t in fwd_cfgs:
                cfg = attn.LaunchConfig(*cfg_t)

                def fwd(cfg=cfg, causal=causal, get=get, key=key):
                    q, k, v, _ = get()

                    def run():
                        attn.FORWARD[key] = cfg
                        return attn._forward(q, k, v, causal, q.shape[-1] ** -0.5)[0]

                    return run

                jobs.append((f"attn fwd {tag} {cfg}", fwd))
            for table, cfgs, name in (
                (attn.BACKWARD_KV, kv_cfgs, "bwd_kv"),
                (attn.BACKWARD_Q, q_cfgs, "bwd_q"),
            ):
                for cfg_t in cfgs:
                    cfg = attn.LaunchConfig(*cfg_t)

                    def bwd(cfg=cfg, causal=causal, get=get, key=key, table=table, name=name):
                        q, k, v, do = get()
                        o, lse = attn._forward(q, k, v, causal, q.shape[-1] ** -0.5)

                        def run():
                            saved = dict(table)
                            table[key] = cfg
                            dq, dk, _ = attn._backward(
                                do, q, k, v, o, lse, causal, q.shape[-1] ** -0.5
                            )
                            table.update(saved)
                            return dk if name == "bwd_kv" else dq

                        return run

                    jobs.append((f"attn {name} {tag} {cfg}", bwd))
            for peer, backend in (
                ("flash", SDPBackend.FLASH_ATTENTION),
                ("cudnn", SDPBackend.CUDNN_ATTENTION),
            ):

                def sdpa_fwd(causal=causal, get=get, backend=backend):
                    q, k, v, _ = get()

                    def run():
                        with sdpa_kernel(backend):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

                    return run

                def sdpa_bwd(causal=causal, get=get, backend=backend):
                    q, k, v, do = (t.detach().clone().requires_grad_() for t in get())

                    def run():
                        with sdpa_kernel(backend):
                            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                        return torch.autograd.grad(o, (q, k, v), do)[1]

                    return run

                jobs.append((f"attn peer {peer} fwd {tag}", sdpa_fwd))
                jobs.append((f"attn peer {peer} fwd+bwd {tag}", sdpa_bwd))
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--parts", default="ss,ssd,attn")
    parser.add_argument("--peer-path", default=".peer")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    parts = args.parts.split(",")
    jobs = []
    if "ss" in parts:
        jobs += selective_scan_jobs()
    if "ssd" in parts:
        jobs += ssd_jobs(args.peer_path)
    if "attn" in parts:
        jobs += attention_jobs()
    if args.compile_only:
        # The peer's autotuning compiles the most: start it first, on the first worker.
        jobs.sort(key=lambda job: "peer" not in job[0])
        for name, make in jobs[args.worker :: args.workers]:
            try:
                make()()
                torch.cuda.synchronize()
            except Exception as err:
                print(f"FAILED {name}: {type(err).__name__}: {str(err)[:300]}", flush=True)
        return

    results, first_output = [], {}
    for name, make in jobs:
        family = " ".join(name.split(" (")[0].split("LaunchConfig")[0].split()[:4])
        try:
            run = make()
            out = run()
            torch.cuda.synchronize()
            ms = median_ms(run)
        except Exception as err:
            print(f"FAILED {name}: {type(err).__name__}: {str(err)[:300]}", flush=True)
            results.append({"job": name, "error": str(err)[:300]})
            continue
        err = rel_err(out, first_output.setdefault(family, out)) if "peer" not in name else 0.0
        results.append({"job": name, "ms": ms, "rel_err_vs_first": err})
        print(f"{ms:9.4f} ms  err {err:.1e}  {name}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "tune.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
