"""The reference selective scan (Mamba-1) and its state update against the float64 loop oracle."""

from __future__ import annotations

import pytest
import torch

from mambaverse.kernels import selective_scan, selective_state_update
from mambaverse.kernels.selective_scan.reference import scan_in_chunks
from tests.kernels.oracles import relative_error, selective_scan_oracle

F64 = torch.float64


def scan_inputs(batch, dim, dstate, length, groups, seed, dtype=F64, decay_scale=3.0):
    """Random inputs with every optional argument; groups=0 means ungrouped B, C (b, n, l)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).to(dtype)

    bc = (batch, dstate, length) if groups == 0 else (batch, groups, dstate, length)
    return {
        "u": randn(batch, dim, length),
        "delta": randn(batch, dim, length),  # raw: softplus(delta + delta_bias) makes it positive
        "A": (-decay_scale * torch.rand(dim, dstate, generator=gen, dtype=F64)).to(dtype),
        "B": randn(*bc),
        "C": randn(*bc),
        "D": randn(dim),
        "z": randn(batch, dim, length),
        "delta_bias": randn(dim),
    }


@pytest.mark.parametrize(
    "batch, dim, dstate, length, groups",
    [(1, 4, 3, 1, 0), (2, 6, 5, 33, 3), (2, 8, 4, 100, 2), (3, 4, 2, 17, 0), (1, 4, 16, 257, 1)],
)
def test_matches_the_oracle_with_every_option(batch, dim, dstate, length, groups):
    inputs = scan_inputs(batch, dim, dstate, length, groups, seed=length)
    y, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    y_ref, last_ref = selective_scan_oracle(**inputs, delta_softplus=True)
    assert y.shape == (batch, dim, length) and last.shape == (batch, dim, dstate)
    assert relative_error(y, y_ref) < 1e-12
    assert relative_error(last, last_ref) < 1e-12


def test_matches_the_oracle_without_options():
    inputs = scan_inputs(2, 6, 4, 40, 0, seed=1)
    u, A, B, C = (inputs[k] for k in "uABC")
    delta = torch.rand_like(inputs["delta"])  # positive step sizes without softplus
    y = selective_scan(u, delta, A, B, C)
    assert isinstance(y, torch.Tensor)
    assert relative_error(y, selective_scan_oracle(u, delta, A, B, C)[0]) < 1e-12


@pytest.mark.parametrize("chunk", [1, 2, 5, 16])
def test_chunked_equals_unchunked(chunk):
    inputs = scan_inputs(2, 4, 3, 37, 2, seed=chunk)  # 37 is not a multiple of any chunk here
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    y, last = scan_in_chunks(*args, True, True, chunk)
    y_whole, last_whole = scan_in_chunks(*args, True, True, 37)
    assert relative_error(y, y_whole) < 1e-13
    assert relative_error(last, last_whole) < 1e-13


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_low_precision_inputs(dtype, tolerance):
    inputs = scan_inputs(2, 8, 4, 65, 2, seed=3, dtype=dtype)
    y, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    y_ref, last_ref = selective_scan_oracle(**inputs, delta_softplus=True)
    assert y.dtype == dtype and last.dtype == torch.float32  # the state stays in fp32
    assert relative_error(y, y_ref) < tolerance
    assert relative_error(last, last_ref) < tolerance


def test_strong_decay_stays_finite_and_exact():
    """exp(ΔA) down to e^-250 per step: a cumulative-product formulation would under/overflow."""
    inputs = scan_inputs(1, 4, 3, 300, 0, seed=4, decay_scale=50.0)
    for name in ("u", "delta", "A", "B", "C"):
        inputs[name].requires_grad_(True)
    delta = 5 * torch.sigmoid(inputs["delta"])  # up to 5
    y, last = selective_scan(
        inputs["u"], delta, inputs["A"], inputs["B"], inputs["C"], return_last_state=True
    )
    y_ref, last_ref = selective_scan_oracle(
        *(inputs[k].detach() for k in ("u",)), delta.detach(),
        *(inputs[k].detach() for k in ("A", "B", "C")),
    )  # fmt: skip
    assert relative_error(y, y_ref) < 1e-12 and relative_error(last, last_ref) < 1e-12
    (y.sum() + last.sum()).backward()
    for name in ("u", "delta", "A", "B", "C"):
        assert torch.isfinite(inputs[name].grad).all(), name


@pytest.mark.parametrize("chunk", [3, 16])
def test_gradients_of_every_input(chunk):
    inputs = scan_inputs(1, 4, 2, 7, 2, seed=5)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    args = [inputs[k].requires_grad_(True) for k in names]

    def scan(*tensors):
        return scan_in_chunks(*tensors, True, True, chunk)  # y and the last state

    assert torch.autograd.gradcheck(scan, args, fast_mode=True)


def test_public_function_gradients_ungrouped_without_softplus():
    inputs = scan_inputs(2, 3, 2, 5, 0, seed=6)
    inputs["delta"] = torch.rand_like(inputs["delta"])
    args = [inputs[k].requires_grad_(True) for k in ("u", "delta", "A", "B", "C", "D", "z")]
    assert torch.autograd.gradcheck(lambda *t: selective_scan(*t), args, fast_mode=True)


@pytest.mark.parametrize("groups", [0, 2])
def test_state_updates_step_through_the_scan(groups):
    inputs = scan_inputs(2, 6, 4, 12, groups, seed=7)
    y_scan, last_scan = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    state = torch.zeros(2, 6, 4, dtype=F64)
    ys = []
    for t in range(12):
        step = {k: inputs[k][..., t] for k in ("u", "delta", "B", "C", "z")}
        ys.append(
            selective_state_update(
                state, step["u"], step["delta"], inputs["A"], step["B"], step["C"],
                D=inputs["D"], z=step["z"], dt_bias=inputs["delta_bias"], dt_softplus=True,
            )
        )  # fmt: skip
    assert relative_error(torch.stack(ys, dim=-1), y_scan) < 1e-12
    assert relative_error(state, last_scan) < 1e-12


def test_state_update_in_fp32_state_with_bf16_inputs():
    inputs = scan_inputs(2, 4, 3, 1, 0, seed=8)
    state = torch.randn(2, 4, 3)
    expected_state = torch.exp(inputs["delta"][..., 0, None] * inputs["A"]) * state.double()
    expected_state += (inputs["delta"][..., 0] * inputs["u"][..., 0])[..., None] * inputs["B"][
        :, None, :, 0
    ]
    x = inputs["u"][..., 0].bfloat16()
    y = selective_state_update(
        state, x, inputs["delta"][..., 0].bfloat16(), inputs["A"].float(),
        inputs["B"][..., 0].float(), inputs["C"][..., 0].float(),
    )  # fmt: skip
    assert y.dtype == torch.bfloat16 and state.dtype == torch.float32
    assert relative_error(state, expected_state) < 2e-2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"delta": (2, 4, 9)}, "delta must have shape (b, d, l) = (2, 4, 10), got (2, 4, 9)"),
        ({"A": (5, 3)}, "A must have shape (d, n) = (4, 3), got (5, 3)"),
        ({"B": (2, 3, 3, 10), "C": (2, 3, 3, 10)}, "d=4 must be a multiple of"),
        ({"C": (2, 3, 11)}, "C must have shape (b, n, l) = (2, 3, 10), got (2, 3, 11)"),
        ({"D": (5,)}, "D must have shape (d,) = (4,), got (5,)"),
        ({"u": (2, 4)}, "u must be (b, d, l), got shape (2, 4)"),
    ],
)
def test_bad_shapes_say_what_was_expected(change, message):
    shapes = {"u": (2, 4, 10), "delta": (2, 4, 10), "A": (4, 3), "B": (2, 3, 10), "C": (2, 3, 10)}
    shapes["D"] = (4,)
    shapes.update(change)
    tensors = {name: torch.randn(shape) for name, shape in shapes.items()}
    with pytest.raises(ValueError, match="selective_scan: ") as err:
        selective_scan(**tensors)
    assert message in str(err.value)
