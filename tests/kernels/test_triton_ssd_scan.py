"""Triton SSD chunked scan and state update against the reference, forward and every gradient.

Without CUDA the kernels run interpreted at tiny sizes (lengths that are not a multiple of the
chunk); the tests marked ``gpu`` run them compiled at Mamba-2 sizes and odd ones, fp32 and bf16.
"""

from __future__ import annotations

import pytest
import torch

from mambaverse.kernels.ssd_scan import reference
from mambaverse.kernels.ssd_scan import ssd_scan as public_ssd_scan
from mambaverse.kernels.ssd_scan import triton as kernels
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

NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 5e-3}


def make_inputs(batch, length, heads, headdim, dstate, groups, D_per_channel=False, gate=True,
                initial=True, device=DEVICE, seed=0):  # fmt: skip
    """Mamba-2-like inputs: softplus step sizes around 0.1, A < 0 per head."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen) * scale + shift).to(device)

    return {
        "x": randn(batch, length, heads, headdim),
        "dt": randn(batch, length, heads, scale=0.5, shift=-2.0),
        "A": -(torch.rand(heads, generator=gen) * 4 + 0.5).to(device),
        "B": randn(batch, length, groups, dstate),
        "C": randn(batch, length, groups, dstate),
        "D": randn(heads, headdim) if D_per_channel else randn(heads),
        "z": randn(batch, length, heads, headdim) if gate else None,
        "dt_bias": randn(heads, scale=0.3),
        "initial_states": randn(batch, heads, headdim, dstate) if initial else None,
    }


def check(inputs, dtype, chunk_size, tol=None, label=""):
    """Triton in ``dtype`` against the reference in float64 on the same (rounded) inputs and
    output cotangents."""
    tol = tol or TOL[dtype]
    params = ("A", "D", "dt_bias", "initial_states")  # kept in fp32 as a model keeps them
    ours = leaves(inputs, dtype, params)
    ref = leaves(inputs, dtype, params, float64=True)

    def run(module, values):
        args = [values[k] for k in NAMES]

        def call(*a):
            x, dt, A, B, C, D, z, dt_bias, init = a
            return module.ssd_scan(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                                   dt_softplus=True, initial_states=init, return_final_states=True)  # fmt: skip

        return call, args

    call, args = run(kernels, ours)
    call_ref, ref_args = run(reference, ref)
    y, final = call(*args)
    y_ref, final_ref = call_ref(*ref_args)
    assert y.dtype == dtype and final.dtype == torch.float32
    errors = {"y": rel_err(y, y_ref), "final_states": rel_err(final, final_ref)}
    # The cotangents reach the kernel in its outputs' dtypes (y's bf16 rounds them by up to
    # 2^-9): the reference gets the same rounded values, else ∂L/∂A, a sum over every step,
    # carries up to ~5e-3 of that rounding alone, which is no error of the kernel's.
    weights = [
        torch.randn(t.shape, dtype=torch.float64, device=t.device).to(t.dtype).double()
        for t in (y, final)
    ]
    g, g_ref = grads(call, args, weights), grads(call_ref, ref_args, weights)
    wanted = [k for k in NAMES if ours[k] is not None]
    for name, a, b in zip(wanted, g, g_ref):
        assert a.dtype == ours[name].dtype, name
        errors[f"d{name}"] = rel_err(a, b)
    report(label or f"ssd_scan {dtype}", errors, tol)


# -- tiny cases: interpreted on CPU (through test_interpreted), compiled on CUDA ---------------------
def test_interpreted():
    run_interpreted(__file__)


@tiny
def test_matches_reference_with_every_input():
    # 37 steps in chunks of 16: a ragged last chunk; 2 groups of 2 heads; odd headdim and dstate.
    check(make_inputs(1, 37, 4, 6, 5, groups=2), torch.float32, chunk_size=16, label="cpu grouped")


@tiny
def test_chunks_of_several_row_blocks():
    # Chunks of 64 steps are 4 row blocks of the interpreted kernels (the block pairs below, on
    # and between the diagonal, carry different terms of ∂L/∂a); the last chunk is 45 steps, so
    # its last block is ragged; each head-split program loops over two heads of the group.
    inputs = make_inputs(1, 173, 4, 6, 5, groups=1)
    check(inputs, torch.float32, chunk_size=64, label="cpu multi-block")


@tiny
def test_chunks_not_a_multiple_of_the_row_block():
    # Chunks of 24 steps against the interpreted kernels' 16-row blocks: every chunk's second
    # block is ragged inside the chunk, and the last chunk is 2 steps.
    check(make_inputs(1, 50, 4, 6, 5, groups=2), torch.float32, chunk_size=24, label="cpu chunk 24")


@tiny
def test_state_pieces_smaller_than_the_state():
    # headdim 20, dstate 24 and 2 heads: to reach their program target, the forward's state
    # kernel splits each head's state into 2 × 2 tiles of 16 (ragged in both directions) and the
    # backward's state passing its 480 elements into 4 blocks of 128
    target = kernels.INTERPRETED.state_programs_per_sm
    assert kernels.state_tile(2, 20, 24, target) == (16, 16)
    assert kernels.passing_block(2, 20 * 24, target) == 128
    check(make_inputs(1, 40, 2, 20, 24, groups=1), torch.float32, chunk_size=16, label="cpu tiles")


def test_state_pieces_shrink_until_the_gpu_is_full():
    # Mamba-2 130m at 16,384 tokens per step (24 heads, state 64 × 128) on 132 multiprocessors,
    # four programs each: batch 4 (4k) -> 32 × 32 tiles, batch 1 (16k) -> 16 × 16; a target
    # already met keeps 64 × 128, and tiles never go below 16
    assert kernels.state_tile(4 * 24, 64, 128, 4 * 132) == (32, 32)
    assert kernels.state_tile(2 * 24, 64, 128, 4 * 132) == (32, 16)
    assert kernels.state_tile(1 * 24, 64, 128, 4 * 132) == (16, 16)
    assert kernels.state_tile(4 * 24, 64, 128, 0) == (64, 128)
    assert kernels.state_tile(1, 64, 128, 10**6) == (16, 16)
    assert kernels.state_tile(8, 16, 16, 100) == (16, 16)
    # tiles are counted over the real state: headdim 80 is 3 tiles of 32, not the padded 4
    assert kernels.state_tile(1, 80, 16, 4) == (16, 16)
    # the backward's state passing (8192 elements a head): 4k keeps blocks of 1024, 16k halves
    # them twice; never below 128
    assert kernels.passing_block(4 * 24, 64 * 128, 4 * 132) == 1024
    assert kernels.passing_block(1 * 24, 64 * 128, 4 * 132) == 256
    assert kernels.passing_block(1, 64 * 128, 10**6) == 128


@tiny
def test_per_channel_D_no_gate_no_initial_state():
    # Five heads in one group: no number of head splits up to 4 divides 5, so the ∂L/∂B, ∂L/∂C
    # kernels take them in one split (stored in the inputs' dtype, no partial sums), compiled or
    # interpreted.
    inputs = make_inputs(1, 21, 5, 4, 4, groups=1, D_per_channel=True, gate=False, initial=False)
    check(inputs, torch.float32, chunk_size=8, label="cpu plain")


@tiny
def test_without_D_and_dt_bias():
    # Neither skip connection nor step bias: their gradient buffers are placeholders the kernels
    # never touch; 3 heads in one group (one head split), the last chunk ragged.
    inputs = {**make_inputs(2, 29, 3, 4, 5, groups=1), "D": None, "dt_bias": None}
    check(inputs, torch.float32, chunk_size=8, label="cpu no D, no dt_bias")


@tiny
def test_public_op_dispatches_to_triton():
    x = make_inputs(1, 20, 2, 4, 4, groups=1)
    args = [x[k] for k in ("x", "dt", "A", "B", "C")]
    y = public_ssd_scan(*args, 16, D=x["D"], dt_softplus=True, impl="triton")
    y_ref = reference.ssd_scan(*[t.double() for t in args], 16, D=x["D"].double(), dt_softplus=True)
    assert rel_err(y, y_ref) < 1e-5


def _strided(t: torch.Tensor) -> torch.Tensor:
    """The same values as a non-contiguous view: one slice of a larger tensor."""
    wide = torch.zeros(*t.shape, 3, dtype=t.dtype, device=t.device)
    wide[..., 1] = t
    return wide[..., 1]


@tiny
def test_strided_parameters_states_and_final_state_gradients():
    # A, D, dt_bias and initial_states as views (stacked parameters, a layer of a state cache),
    # and final_states' gradient expanded (stride 0, as sum() hands it): read as they are.
    t = make_inputs(1, 11, 4, 6, 5, groups=2, D_per_channel=True)
    strided = {**t, **{k: _strided(t[k]) for k in ("A", "D", "dt_bias", "initial_states")}}
    assert not any(strided[k].is_contiguous() for k in ("A", "D", "dt_bias", "initial_states"))
    outs = []
    for module, values in ((kernels, strided), (reference, t)):
        x = values["x"].clone().requires_grad_()
        args = {k: values[k] for k in NAMES if k != "x"}
        y, final = module.ssd_scan(x, chunk_size=4, dt_softplus=True, return_final_states=True,
                                   **args)  # fmt: skip
        (y.sum() + final.sum()).backward()
        outs.append((y, final, x.grad))
    for ours, ref in zip(*outs):
        assert rel_err(ours, ref) < 1e-5
    state = torch.randn(1, 4, 6, 5, device=DEVICE)
    step = {"x": t["x"][:, 0], "dt": t["dt"][:, 0], "B": t["B"][:, 0], "C": t["C"][:, 0]}
    y = kernels.ssd_state_update(state.clone(), **step, A=strided["A"], D=strided["D"],
                                 dt_bias=strided["dt_bias"], dt_softplus=True)  # fmt: skip
    y_ref = reference.ssd_state_update(state.clone(), **step, A=t["A"], D=t["D"],
                                       dt_bias=t["dt_bias"], dt_softplus=True)  # fmt: skip
    assert rel_err(y, y_ref) < 1e-5


@tiny
@pytest.mark.parametrize("D_per_channel", [False, True])
def test_state_update_matches_reference(D_per_channel):
    gen = torch.Generator().manual_seed(2)
    batch, heads, headdim, dstate, groups = 2, 4, 6, 5, 2
    t = {
        "state": torch.randn(batch, heads, headdim, dstate, generator=gen),
        "x": torch.randn(batch, heads, headdim, generator=gen),
        "dt": torch.randn(batch, heads, generator=gen),
        "A": -torch.rand(heads, generator=gen),
        "B": torch.randn(batch, groups, dstate, generator=gen),
        "C": torch.randn(batch, groups, dstate, generator=gen),
        "D": torch.randn(heads, headdim, generator=gen)
        if D_per_channel
        else torch.randn(heads, generator=gen),
        "z": torch.randn(batch, heads, headdim, generator=gen),
        "dt_bias": torch.randn(heads, generator=gen),
    }
    t = {k: v.to(DEVICE) for k, v in t.items()}
    state_ref = t["state"].double().clone()
    rest = {k: v for k, v in t.items() if k != "state"}
    y = kernels.ssd_state_update(t["state"], **rest, dt_softplus=True)
    y_ref = reference.ssd_state_update(
        state_ref, **{k: v.double() for k, v in rest.items()}, dt_softplus=True
    )
    assert rel_err(y, y_ref) < 1e-5 and rel_err(t["state"], state_ref) < 1e-5


@tiny
def test_errors_name_the_problem(monkeypatch):
    x = make_inputs(1, 8, 2, 4, 4, groups=1)
    args = [x[k] for k in ("x", "dt", "A", "B", "C")]
    with pytest.raises(ValueError, match=r"dt has shape \(1, 7, 2\); expected \(1, 8, 2\)"):
        kernels.ssd_scan(args[0], args[1][:, :7], *args[2:], 4)
    with pytest.raises(ValueError, match="groups, which do not divide 2 heads"):
        kernels.ssd_scan(*args[:3], args[3].repeat(1, 1, 3, 1), args[4].repeat(1, 1, 3, 1), 4)
    offsets_limit(monkeypatch, 8)
    with pytest.raises(ValueError, match=r"x of shape .* within one batch element.*initial_states"):
        kernels.ssd_scan(*args, 4)


# -- GPU: compiled, realistic and odd shapes ----------------------------------------------------------
@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "shape",
    [
        (2, 2048, 24, 64, 128, 1, 256),  # Mamba-2 130m block
        (1, 1000, 8, 64, 128, 2, 256),  # ragged last chunk, two groups
        (2, 333, 6, 48, 40, 3, 64),  # odd headdim and dstate, small chunks
    ],
)
def test_gpu_matches_reference(shape, dtype):
    batch, length, heads, headdim, dstate, groups, chunk = shape
    inputs = make_inputs(batch, length, heads, headdim, dstate, groups, D_per_channel=headdim == 48)
    check(inputs, dtype, chunk, label=f"gpu ssd_scan {shape} {dtype}")


@pytest.mark.gpu
@gpu
def test_gpu_state_update_steps_reproduce_the_scan():
    batch, length, heads, headdim, dstate, groups = 2, 40, 4, 64, 128, 2
    x = make_inputs(batch, length, heads, headdim, dstate, groups, initial=False)
    y_scan, final = kernels.ssd_scan(x["x"], x["dt"], x["A"], x["B"], x["C"], 16, D=x["D"], z=x["z"],
                                     dt_bias=x["dt_bias"], dt_softplus=True, return_final_states=True)  # fmt: skip
    state = torch.zeros(batch, heads, headdim, dstate, device="cuda")
    ys = [
        kernels.ssd_state_update(
            state,
            x["x"][:, t],
            x["dt"][:, t],
            x["A"],
            x["B"][:, t],
            x["C"][:, t],
            D=x["D"],
            z=x["z"][:, t],
            dt_bias=x["dt_bias"],
            dt_softplus=True,
        )
        for t in range(length)
    ]
    errors = {"y": rel_err(torch.stack(ys, 1), y_scan), "state": rel_err(state, final)}
    report("gpu ssd_state_update steps vs scan", errors, 1e-5)
