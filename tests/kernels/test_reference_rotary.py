"""The reference rotary embedding against the rotation written with complex numbers in float64,
the property it exists for (q·k depends on positions only through their difference), and the
public op's input checks."""

from __future__ import annotations

import pytest
import torch

from mambaverse.kernels import apply_rotary
from tests.kernels.oracles import relative_error

F64 = torch.float64


def complex_rotation(x, positions, rotary_dim, theta):
    """(x1 + i·x2) · exp(i · position · θ^(−2j / rotary_dim)), then the channels kept."""
    half = rotary_dim // 2
    j = torch.arange(half, dtype=F64)
    angle = positions.to(F64)[:, None] * theta ** (-2 * j / rotary_dim)
    z = torch.complex(x[..., :half], x[..., half:rotary_dim]) * torch.polar(
        torch.ones_like(angle), angle
    )
    return torch.cat([z.real, z.imag, x[..., rotary_dim:]], dim=-1)


@pytest.mark.parametrize(("head_dim", "rotary_dim"), [(8, 8), (10, 6), (4, 2)])
def test_matches_the_complex_rotation(head_dim, rotary_dim):
    gen = torch.Generator().manual_seed(head_dim)
    x = torch.randn(2, 3, 9, head_dim, generator=gen, dtype=F64)
    positions = torch.randint(0, 5000, (9,), generator=gen)
    out = apply_rotary(x, positions, rotary_dim, 500.0)
    assert relative_error(out, complex_rotation(x, positions, rotary_dim, 500.0)) < 1e-13
    assert torch.equal(out[..., rotary_dim:], x[..., rotary_dim:])


def test_scores_depend_on_the_position_difference():
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 1, 1, 16, generator=gen, dtype=F64) for _ in "qk")
    score = lambda p, s: (  # noqa: E731
        apply_rotary(q, torch.tensor([p]), 16, 1e4) * apply_rotary(k, torch.tensor([s]), 16, 1e4)
    ).sum()
    torch.testing.assert_close(score(3, 10), score(103, 110))
    assert not torch.isclose(score(3, 10), score(3, 11))


def test_gradients():
    x = torch.randn(1, 2, 5, 6, dtype=F64, requires_grad=True)
    op = lambda t: apply_rotary(t, torch.arange(5), 4, 100.0)  # noqa: E731
    assert torch.autograd.gradcheck(op, (x,), fast_mode=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rotary_dim": 5}, ValueError, "even and in 2..head_dim=8, got 5"),
        ({"rotary_dim": 10}, ValueError, "got 10"),
        ({"rotary_dim": 4.0}, TypeError, "rotary_dim must be an int, got float"),
        ({"theta": 0.0}, ValueError, "theta .* must be positive"),
        ({"positions": torch.arange(4.0)}, TypeError, "positions must be integers"),
        ({"positions": torch.ones(4, dtype=torch.bool)}, TypeError, "positions must be integers"),
        ({"positions": torch.arange(3)}, ValueError, r"positions must have shape \(L,\) = \(4,\)"),
        ({"x": torch.randn(4, 8)}, ValueError, r"x must be \(B, heads, L, head_dim\)"),
    ],
)
def test_bad_inputs_name_the_problem(kwargs, error, match):
    args = {"x": torch.randn(1, 2, 4, 8), "positions": torch.arange(4), "rotary_dim": 8,
            "theta": 1e4, **kwargs}  # fmt: skip
    with pytest.raises(error, match=match):
        apply_rotary(**args)
