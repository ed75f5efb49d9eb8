"""The reference SSD scan (Mamba-2) and its state update against the float64 loop oracle."""

from __future__ import annotations

import pytest
import torch

from mambaverse.kernels import ssd_scan, ssd_state_update
from mambaverse.kernels.ssd_scan import reference
from tests.kernels.oracles import relative_error, ssd_oracle

F64 = torch.float64


def ssd_inputs(batch, length, heads, headdim, groups, dstate, seed, dtype=F64, per_channel_D=True):
    """Random inputs with every optional argument (raw dt: softplus(dt + dt_bias) is positive)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).to(dtype)

    return {
        "x": randn(batch, length, heads, headdim),
        "dt": randn(batch, length, heads),
        "A": (-3 * torch.rand(heads, generator=gen, dtype=F64)).to(dtype),
        "B": randn(batch, length, groups, dstate),
        "C": randn(batch, length, groups, dstate),
        "D": randn(heads, headdim) if per_channel_D else randn(heads),
        "z": randn(batch, length, heads, headdim),
        "dt_bias": randn(heads),
        "initial_states": randn(batch, heads, headdim, dstate),
    }


@pytest.mark.parametrize(
    "batch, length, heads, headdim, groups, dstate, chunk, per_channel_D",
    [
        (1, 1, 2, 3, 1, 4, 4, True),
        (2, 33, 4, 3, 2, 5, 8, False),
        (1, 100, 6, 2, 3, 4, 16, True),
        (2, 64, 4, 4, 1, 8, 64, False),
        (1, 130, 2, 2, 2, 3, 256, True),
    ],
)
def test_matches_the_oracle_with_every_option(
    batch, length, heads, headdim, groups, dstate, chunk, per_channel_D
):
    inputs = ssd_inputs(batch, length, heads, headdim, groups, dstate, length, F64, per_channel_D)
    y, final = ssd_scan(**inputs, chunk_size=chunk, dt_softplus=True, return_final_states=True)
    y_ref, final_ref = ssd_oracle(**inputs, dt_softplus=True)
    assert y.shape == (batch, length, heads, headdim)
    assert final.shape == (batch, heads, headdim, dstate)
    assert relative_error(y, y_ref) < 1e-12
    assert relative_error(final, final_ref) < 1e-12


def test_matches_the_oracle_without_options():
    inputs = ssd_inputs(2, 40, 4, 3, 2, 5, seed=1)
    x, A, B, C = (inputs[k] for k in "xABC")
    dt = torch.rand_like(inputs["dt"])
    y = ssd_scan(x, dt, A, B, C, 16)
    assert isinstance(y, torch.Tensor)
    assert relative_error(y, ssd_oracle(x, dt, A, B, C)[0]) < 1e-12


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunked_equals_unchunked(chunk):
    inputs = ssd_inputs(2, 37, 4, 3, 2, 5, seed=chunk)  # 37 is not a multiple of any chunk here
    y, final = ssd_scan(**inputs, chunk_size=chunk, dt_softplus=True, return_final_states=True)
    y_one, final_one = ssd_scan(**inputs, chunk_size=37, dt_softplus=True, return_final_states=True)
    assert relative_error(y, y_one) < 1e-13
    assert relative_error(final, final_one) < 1e-13


@pytest.mark.parametrize("block_elements", [1, 200])  # blocks of one chunk, of a few chunks
def test_blocks_of_chunks_equal_one_block(block_elements, monkeypatch):
    inputs = ssd_inputs(2, 45, 2, 3, 1, 4, seed=block_elements)  # 45 = 11 chunks of 4, then 1
    options = {"chunk_size": 4, "dt_softplus": True, "return_final_states": True}
    y_one, final_one = ssd_scan(**inputs, **options)
    monkeypatch.setattr(reference, "BLOCK_ELEMENTS", block_elements)
    y, final = ssd_scan(**inputs, **options)
    assert relative_error(y, y_one) < 1e-13
    assert relative_error(final, final_one) < 1e-13


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_low_precision_inputs(dtype, tolerance):
    inputs = ssd_inputs(2, 50, 4, 8, 2, 16, seed=3, dtype=dtype)
    y, final = ssd_scan(**inputs, chunk_size=16, dt_softplus=True, return_final_states=True)
    y_ref, final_ref = ssd_oracle(**inputs, dt_softplus=True)
    assert y.dtype == dtype and final.dtype == torch.float32
    assert relative_error(y, y_ref) < tolerance
    assert relative_error(final, final_ref) < tolerance


def test_strong_decay_stays_finite_and_exact():
    """Per-step decays down to e^-250: only non-positive exponents may be exponentiated."""
    inputs = ssd_inputs(1, 200, 2, 3, 1, 4, seed=4)
    x, B, C = (inputs[k].requires_grad_(True) for k in "xBC")
    A = torch.tensor([-50.0, -0.01], dtype=F64, requires_grad=True)
    dt = (5 * torch.sigmoid(inputs["dt"])).requires_grad_(True)
    y, final = ssd_scan(x, dt, A, B, C, 64, return_final_states=True)
    y_ref, final_ref = ssd_oracle(x.detach(), dt.detach(), A.detach(), B.detach(), C.detach())
    assert relative_error(y, y_ref) < 1e-12 and relative_error(final, final_ref) < 1e-12
    (y.sum() + final.sum()).backward()
    for name, t in {"x": x, "dt": dt, "A": A, "B": B, "C": C}.items():
        assert torch.isfinite(t.grad).all(), name


@pytest.mark.parametrize("per_channel_D", [True, False])
def test_gradients_of_every_input(per_channel_D):
    inputs = ssd_inputs(1, 7, 4, 2, 2, 3, seed=5, per_channel_D=per_channel_D)
    names = list(inputs)
    args = [inputs[k].requires_grad_(True) for k in names]

    def scan(*tensors):
        kwargs = dict(zip(names, tensors))
        return ssd_scan(**kwargs, chunk_size=3, dt_softplus=True, return_final_states=True)

    assert torch.autograd.gradcheck(scan, args, fast_mode=True)


def test_state_updates_step_through_the_scan():
    inputs = ssd_inputs(2, 12, 4, 3, 2, 5, seed=6)
    y_scan, final_scan = ssd_scan(
        **inputs, chunk_size=5, dt_softplus=True, return_final_states=True
    )
    state = inputs["initial_states"].clone()
    ys = []
    for t in range(12):
        step = {k: inputs[k][:, t] for k in ("x", "dt", "B", "C", "z")}
        ys.append(
            ssd_state_update(
                state, step["x"], step["dt"], inputs["A"], step["B"], step["C"],
                D=inputs["D"], z=step["z"], dt_bias=inputs["dt_bias"], dt_softplus=True,
            )
        )  # fmt: skip
    assert relative_error(torch.stack(ys, dim=1), y_scan) < 1e-12
    assert relative_error(state, final_scan) < 1e-12


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dt": (2, 10, 3)}, "dt must have shape (b, l, h) = (2, 10, 4), got (2, 10, 3)"),
        ({"A": (4, 1)}, "A must have shape (h,) = (4,), got (4, 1)"),
        ({"B": (2, 10, 3, 5), "C": (2, 10, 3, 5)}, "h=4 must be a multiple of"),
        ({"C": (2, 10, 2, 6)}, "C must have shape B's shape = (2, 10, 2, 5), got (2, 10, 2, 6)"),
        ({"D": (4, 2)}, "D must have shape (h, p) = (4, 3), got (4, 2)"),
        ({"initial_states": (2, 4, 3, 4)}, "initial_states must have shape (b, h, p, n)"),
    ],
)
def test_bad_shapes_say_what_was_expected(change, message):
    shapes = {"x": (2, 10, 4, 3), "dt": (2, 10, 4), "A": (4,), "B": (2, 10, 2, 5)}
    shapes.update({"C": (2, 10, 2, 5), "D": (4,), "initial_states": (2, 4, 3, 5)})
    shapes.update(change)
    tensors = {name: torch.randn(shape) for name, shape in shapes.items()}
    with pytest.raises(ValueError, match="ssd_scan: ") as err:
        ssd_scan(**tensors, chunk_size=4)
    assert message in str(err.value)
