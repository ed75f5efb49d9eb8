"""Triton selective scan and state update against the reference, forward and every gradient.

Without CUDA the kernels run interpreted at tiny sizes (several chunks, a ragged last one); the
tests marked ``gpu`` run them compiled at realistic and odd sizes, in fp32 and bf16.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mambaverse.kernels.selective_scan import reference
from mambaverse.kernels.selective_scan import selective_scan as public_selective_scan
from mambaverse.kernels.selective_scan import triton as kernels
from tests.kernels.triton_helpers import (
    DEVICE,
    gpu,
    grads,
    leaves,
    offsets_limit,
    rel_err,
    report,
    run_interpreted,
    tiny,
)

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 5e-3}


def make_inputs(batch, dim, dstate, length, groups=None, gate=True, device=DEVICE, seed=0):
    """Mamba-like inputs: small step sizes after softplus, A < 0, unit-scale B, C, u."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen) * scale + shift).to(device)

    bc = (batch, dstate, length) if groups is None else (batch, groups, dstate, length)
    return {
        "u": randn(batch, dim, length),
        "delta": randn(batch, dim, length, scale=0.5, shift=-1.5),
        "A": -(torch.rand(dim, dstate, generator=gen) * 3 + 0.2).to(device),
        "B": randn(*bc),
        "C": randn(*bc),
        "D": randn(dim),
        "z": randn(batch, dim, length) if gate else None,
        "delta_bias": randn(dim, scale=0.3),
    }


def channels_innermost(t: torch.Tensor) -> torch.Tensor:
    """The same (b, d, l) values laid out as the Mamba block passes them: a transposed
    (b, l, d) tensor, channels innermost."""
    return t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()


def check(inputs, dtype, softplus=True, tol=None, label="", channels_last=False):
    """Triton in ``dtype`` against the reference in float64 on the same (rounded) inputs.

    channels_last: u, δ and z are passed channels innermost; y and du, dδ, dz must come back
    in that layout (and with the same values)."""
    tol = tol or TOL[dtype]
    params = ("A", "D", "delta_bias")  # kept in fp32 as a model keeps them
    ours = leaves(inputs, dtype, params)
    if channels_last:
        ours.update(
            {k: channels_innermost(ours[k]) for k in ("u", "delta", "z") if ours[k] is not None}
        )
    ref = leaves(inputs, dtype, params, float64=True)
    args = [ours[k] for k in NAMES]
    ref_args = [ref[k] for k in NAMES]

    y, last = kernels.selective_scan(*args, delta_softplus=softplus, return_last_state=True)
    y_ref, last_ref = reference.selective_scan(
        *ref_args, delta_softplus=softplus, return_last_state=True
    )
    assert y.dtype == dtype and last.dtype == torch.float32
    assert (y.stride(1) == 1) == channels_last, y.stride()
    errors = {"y": rel_err(y, y_ref), "last_state": rel_err(last, last_ref)}
    with torch.no_grad():  # the inference kernel
        y_inf, last_inf = kernels.selective_scan(
            *args, delta_softplus=softplus, return_last_state=True
        )
    assert y_inf.dtype == dtype and (y_inf.stride(1) == 1) == channels_last
    errors.update(
        {"y (inference)": rel_err(y_inf, y_ref), "last (inference)": rel_err(last_inf, last_ref)}
    )

    # Seeded: bf16 rounds the upstream gradient too, and at the tiny interpreted sizes an
    # unlucky draw of it moves the relative errors by a factor of 2-3.
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(y_ref.shape, generator=gen, dtype=torch.float64).to(y.device)
    g = grads(lambda *a: kernels.selective_scan(*a, delta_softplus=softplus), args, [weight])
    g_ref = grads(
        lambda *a: reference.selective_scan(*a, delta_softplus=softplus), ref_args, [weight]
    )
    wanted = [k for k in NAMES if ours[k] is not None]
    for name, a, b in zip(wanted, g, g_ref):
        assert a.dtype == ours[name].dtype, name
        if name in ("u", "delta", "z"):
            assert (a.stride(1) == 1) == channels_last, (name, a.stride())
        errors[f"d{name}"] = rel_err(a, b)
    report(label or f"selective_scan {dtype}", errors, tol)


# -- tiny cases: interpreted on CPU (through test_interpreted), compiled on CUDA ---------------------
def test_interpreted():
    run_interpreted(__file__)


@tiny
def test_matches_reference_with_every_input():
    # 19 steps in chunks of 8: two full chunks and a ragged one; dstate not a power of 2.
    check(make_inputs(1, 4, 3, 19), torch.float32, label="cpu plain")


@tiny
def test_grouped_B_C_without_gate_or_softplus():
    check(
        make_inputs(1, 8, 4, 13, groups=2, gate=False),
        torch.float32,
        softplus=False,
        label="cpu grouped",
    )


VARIANTS = {  # name -> LaunchConfig fields set on both passes (the backward's dB/dC only there)
    "one segment, atomic dB dC": {"target_programs": 1, "bc_partials": False},
    "one segment, dB dC partial sums": {"target_programs": 1, "bc_partials": True},
    "segments of 4 chunks, partial sums": {
        "segment_below": 10**6,
        "target_programs": 10**6,
        "min_segment_chunks": 3,
        "bc_partials": True,
    },
    "a segment per chunk, partial sums": {
        "segment_below": 10**6,
        "target_programs": 10**6,
        "min_segment_chunks": 1,
        "bc_partials": True,
    },
}


INFERENCE_VARIANTS = {  # LaunchConfig of the inference kernel, with each backward variant
    "one segment, atomic dB dC": kernels.LaunchConfig(block_d=1, chunk=4, warps=1),
    "one segment, dB dC partial sums": kernels.LaunchConfig(block_d=4, chunk=32, warps=1),
}


@pytest.fixture(params=list(VARIANTS))
def variant(request, monkeypatch):
    """Run the kernels with every way of splitting time and of summing ∂L/∂B, ∂L/∂C."""
    fields = VARIANTS[request.param]
    fwd, bwd = kernels._configs()
    fwd = dataclasses.replace(fwd, **{k: v for k, v in fields.items() if k != "bc_partials"})
    bwd = dataclasses.replace(bwd, **fields)
    monkeypatch.setattr(kernels, "_configs", lambda: (fwd, bwd))
    if request.param in INFERENCE_VARIANTS:  # a channel per program; a chunk past the sequence
        inference = INFERENCE_VARIANTS[request.param]
        monkeypatch.setattr(kernels, "INTERPRETED_INFERENCE", inference)
        monkeypatch.setattr(kernels, "INFERENCE", inference)
    return request.param, bwd


@tiny
@pytest.mark.parametrize("groups", [None, 2])
def test_channels_innermost_inputs_every_variant(groups, variant):
    name, config = variant
    # 27 steps in chunks of 4: seven chunks, the last ragged; segments of 4 + 3 chunks, or 7 of 1.
    expected = {"segments of 4": 2, "a segment per chunk": 7}
    segments = next((n for key, n in expected.items() if name.startswith(key)), 1)
    assert kernels._segments(config, 1, 7)[0] == segments
    check(
        make_inputs(1, 4, 3, 27, groups=groups),
        torch.float32,
        channels_last=True,
        label=f"cpu channels innermost, groups {groups}, {name}",
    )


@tiny
@pytest.mark.parametrize("segments", [1, 3, 7])
@pytest.mark.parametrize(
    "dtype, dstate, groups", [(torch.float32, 3, 2), (torch.bfloat16, 5, None)]
)
def test_inference_by_channel_in_segments(segments, dtype, dstate, groups, monkeypatch):
    """Channels-innermost inputs without gradients: the thread-per-channel kernel, its sequence
    in 1, 3 or 7 segments (27 steps: 7 iterations of 4, the last ragged), against float64."""
    batch, dim, length = 2, 8, 27
    config = kernels.INTERPRETED_BY_CHANNEL
    programs = batch * dim // kernels._block_d(config, dim // (groups or 1))
    config = dataclasses.replace(
        config, target_programs=programs * segments, segment_below=programs + 1
    )
    config = dataclasses.replace(config, min_segment_chunks=1)
    assert kernels._segments(config, programs, 7)[0] == segments
    monkeypatch.setattr(kernels, "INTERPRETED_BY_CHANNEL", config)
    monkeypatch.setattr(kernels, "BY_CHANNEL", config)
    inputs = make_inputs(batch, dim, dstate, length, groups, seed=segments)
    params = ("A", "D", "delta_bias")
    ours = leaves(inputs, dtype, params)
    ours.update({k: channels_innermost(ours[k]) for k in ("u", "delta", "z")})
    ref = leaves(inputs, dtype, params, float64=True)
    with torch.no_grad():
        y, last = kernels.selective_scan(
            *[ours[k] for k in NAMES], delta_softplus=True, return_last_state=True
        )
    y_ref, last_ref = reference.selective_scan(
        *[ref[k] for k in NAMES], delta_softplus=True, return_last_state=True
    )
    assert y.stride(1) == 1 and y.dtype == dtype and last.dtype == torch.float32
    errors = {"y": rel_err(y, y_ref), "last_state": rel_err(last, last_ref)}
    report(f"by channel, {segments} segments, {dtype}", errors, TOL[dtype])


@tiny
def test_inference_channels_innermost_past_the_by_channel_limit(monkeypatch):
    """Past BY_CHANNEL_MAX_BLOCKS the channels-innermost inference runs chunk-parallel."""
    monkeypatch.setattr(kernels, "BY_CHANNEL_MAX_BLOCKS", 0)
    monkeypatch.setattr(kernels, "_launch_by_channel", lambda *a: pytest.fail("by channel"))
    check(make_inputs(1, 4, 3, 27), torch.float32, channels_last=True,
          label="cpu channels innermost, chunk-parallel inference")  # fmt: skip


def test_register_cap_only_when_an_unsegmented_grid_outnumbers_the_resident_programs(monkeypatch):
    sm = type("Props", (), {"multi_processor_count": 132})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: sm)
    cuda = torch.device("cuda")
    capped = kernels.BACKWARD
    assert capped.register_cap is not None
    fits = capped.resident_per_sm * 132
    assert kernels._register_cap(capped, fits, 1, cuda) == {}
    assert kernels._register_cap(capped, fits + 1, 1, cuda) == {"maxnreg": capped.register_cap}
    assert kernels._register_cap(capped, fits + 1, 2, cuda) == {}  # time segments: uncapped
    assert kernels._register_cap(capped, fits + 1, 1, torch.device("cpu")) == {}
    uncapped = kernels.LaunchConfig(block_d=8, chunk=8, warps=1)
    assert kernels._register_cap(uncapped, 10 * fits, 1, cuda) == {}


@tiny
def test_empty_sequence():
    y = kernels.selective_scan(*[make_inputs(1, 4, 3, 0)[k] for k in NAMES], delta_softplus=True)
    assert y.shape == (1, 4, 0)


@tiny
def test_bfloat16_inputs_keep_fp32_state():
    check(make_inputs(1, 2, 4, 9), torch.bfloat16, label="cpu bf16")


@tiny
def test_public_op_dispatches_to_triton():
    x = make_inputs(1, 4, 4, 9)
    args = [x[k] for k in NAMES]
    y = public_selective_scan(*args, delta_softplus=True, impl="triton")
    y_ref = reference.selective_scan(
        *[None if t is None else t.double() for t in args], delta_softplus=True
    )
    assert rel_err(y, y_ref) < 1e-5


@tiny
@pytest.mark.parametrize("groups", [None, 2])
def test_state_update_matches_reference(groups):
    gen = torch.Generator().manual_seed(1)
    batch, dim, dstate = 2, 6, 5
    bc = (batch, dstate) if groups is None else (batch, groups, dstate)
    t = {
        "state": torch.randn(batch, dim, dstate, generator=gen),
        "x": torch.randn(batch, dim, generator=gen),
        "dt": torch.randn(batch, dim, generator=gen),
        "A": -torch.rand(dim, dstate, generator=gen),
        "B": torch.randn(*bc, generator=gen),
        "C": torch.randn(*bc, generator=gen),
        "D": torch.randn(dim, generator=gen),
        "z": torch.randn(batch, dim, generator=gen),
        "dt_bias": torch.randn(dim, generator=gen),
    }
    t = {k: v.to(DEVICE) for k, v in t.items()}
    state_ref = t["state"].double().clone()
    rest = {k: v for k, v in t.items() if k != "state"}
    y = kernels.selective_state_update(t["state"], **rest, dt_softplus=True)
    y_ref = reference.selective_state_update(
        state_ref, **{k: v.double() for k, v in rest.items()}, dt_softplus=True
    )
    assert rel_err(y, y_ref) < 1e-5 and rel_err(t["state"], state_ref) < 1e-5


@tiny
def test_errors_name_the_problem(monkeypatch):
    x = make_inputs(1, 4, 4, 9)
    args = [x[k] for k in NAMES]
    with pytest.raises(ValueError, match=r"delta has shape \(1, 4, 8\); expected \(1, 4, 9\)"):
        kernels.selective_scan(args[0], args[1][..., :8], *args[2:])
    with pytest.raises(TypeError, match="float64"):
        kernels.selective_scan(args[0].double(), *args[1:])
    offsets_limit(monkeypatch, 8)
    with pytest.raises(ValueError, match=r"u of shape .* 32-bit .* impl='reference'"):
        kernels.selective_scan(*args)
    with pytest.raises(RuntimeError, match="no_grad"):
        state = torch.zeros(1, 4, 4, device=DEVICE)
        kernels.selective_state_update(
            state,
            x["u"][..., 0].requires_grad_(),
            x["delta"][..., 0],
            x["A"],
            x["B"][..., 0],
            x["C"][..., 0],
        )


# -- GPU: compiled, realistic and odd shapes ----------------------------------------------------------
@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "shape",
    [
        (2, 1536, 16, 2048, None),  # Mamba-130m block
        (3, 200, 16, 1000, None),  # ragged everything
        (2, 96, 13, 777, 3),  # odd dstate, grouped B/C
        (1, 64, 16, 4099, None),  # long, one step past a multiple of the chunk
    ],
)
def test_gpu_matches_reference(shape, dtype):
    batch, dim, dstate, length, groups = shape
    check(make_inputs(batch, dim, dstate, length, groups, seed=hash(shape) % 1000), dtype,
          label=f"gpu selective_scan {shape} {dtype}")  # fmt: skip


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("shape", [(2, 1536, 16, 2048, None), (2, 96, 13, 777, 3)])
def test_gpu_channels_innermost_every_variant(shape, variant):
    batch, dim, dstate, length, groups = shape
    label = f"gpu selective_scan channels innermost {shape} bf16, {variant[0]}"
    inputs = make_inputs(batch, dim, dstate, length, groups, seed=7)
    check(inputs, torch.bfloat16, channels_last=True, label=label)


@pytest.mark.gpu
@gpu
def test_gpu_backward_with_registers_capped():
    """Batch 8 of Mamba-130m's channels: more backward programs than the GPU holds at full
    registers, so they run capped (spilling); the gradients must not change."""
    batch, dim = 8, 1536
    programs = batch * dim // kernels.BACKWARD.block_d
    if not kernels._register_cap(kernels.BACKWARD, programs, 1, torch.device("cuda")):
        pytest.skip("this GPU holds every program of the grid at full registers")
    inputs = make_inputs(batch, dim, 16, 333, seed=11)
    check(inputs, torch.bfloat16, channels_last=True, label="gpu selective_scan capped bf16")


@pytest.mark.gpu
@gpu
def test_gpu_state_update_steps_reproduce_the_scan():
    batch, dim, dstate, length = 2, 256, 16, 64
    x = make_inputs(batch, dim, dstate, length, groups=2)
    y_scan, last = kernels.selective_scan(
        *[x[k] for k in NAMES], delta_softplus=True, return_last_state=True
    )
    state = torch.zeros(batch, dim, dstate, device="cuda")
    ys = []
    for t in range(length):
        ys.append(
            kernels.selective_state_update(
                state, x["u"][..., t], x["delta"][..., t], x["A"], x["B"][..., t], x["C"][..., t],
                D=x["D"], z=x["z"][..., t], dt_bias=x["delta_bias"], dt_softplus=True,
            )
        )  # fmt: skip
    errors = {"y": rel_err(torch.stack(ys, -1), y_scan), "state": rel_err(state, last)}
    report("gpu selective_state_update steps vs scan", errors, 1e-5)
