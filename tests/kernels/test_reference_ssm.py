"""mambaverse.ssm: discretisation against closed forms, and the recurrent, convolutional and
selective-scan views of one system agreeing."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

from mambaverse import ssm
from mambaverse.kernels import selective_scan
from tests.kernels.oracles import relative_error

F64 = torch.float64


def lti_system(n, m, p, seed):
    """A stable continuous system: eigenvalues of A pushed into the left half-plane."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=gen, dtype=F64) - 3 * torch.eye(n, dtype=F64)
    B, C, D = (torch.randn(*shape, generator=gen, dtype=F64) for shape in ((n, m), (p, n), (p, m)))
    return A, B, C, D


@pytest.mark.parametrize("discretize", [ssm.discretize_zoh, ssm.discretize_bilinear])
def test_recurrent_and_convolutional_views_agree(discretize):
    A, B, C, D = lti_system(4, 2, 3, seed=0)
    A_bar, B_bar = discretize(A, B, 0.1)
    u = torch.randn(5, 37, 2, dtype=F64)  # batch of 5 sequences, length 37
    y_recurrent, _ = ssm.run_recurrent(A_bar, B_bar, C, D, u)
    y_convolutional = ssm.run_convolutional(A_bar, B_bar, C, D, u)
    assert y_recurrent.shape == (5, 37, 3)
    assert relative_error(y_convolutional, y_recurrent) < 1e-12


def test_recurrence_continues_from_a_state():
    A, B, C, D = lti_system(3, 1, 1, seed=1)
    A_bar, B_bar = ssm.discretize_zoh(A, B, 0.05)
    u = torch.randn(20, 1, dtype=F64)
    y_whole, state_whole = ssm.run_recurrent(A_bar, B_bar, C, D, u)
    y_first, state = ssm.run_recurrent(A_bar, B_bar, C, D, u[:8])
    y_rest, state = ssm.run_recurrent(A_bar, B_bar, C, D, u[8:], state)
    assert relative_error(torch.cat([y_first, y_rest]), y_whole) < 1e-14
    assert relative_error(state, state_whole) < 1e-14


def test_convolution_kernel_is_C_A_power_B():
    A, B, C, _ = lti_system(3, 2, 2, seed=2)
    A_bar, B_bar = ssm.discretize_bilinear(A, B, 0.2)
    kernel = ssm.convolution_kernel(A_bar, B_bar, C, 13)
    expected = torch.stack([C @ torch.linalg.matrix_power(A_bar, j) @ B_bar for j in range(13)])
    assert relative_error(kernel, expected) < 1e-13


def test_zoh_of_a_diagonal_system_is_the_closed_form():
    gen = torch.Generator().manual_seed(3)
    a = -0.1 - 3 * torch.rand(5, generator=gen, dtype=F64)
    B = torch.randn(5, 2, generator=gen, dtype=F64)
    delta = 0.3
    A_bar, B_bar = ssm.discretize_zoh(torch.diag(a), B, delta)
    # Ā = exp(ΔA);  B̄ = (ΔA)^{-1} (exp(ΔA) - I) ΔB, elementwise for a diagonal A
    assert relative_error(A_bar, torch.diag(torch.exp(delta * a))) < 1e-14
    closed_form = ((torch.exp(delta * a) - 1) / (delta * a))[:, None] * delta * B
    assert relative_error(B_bar, closed_form) < 1e-13


def test_zoh_of_a_full_matrix_is_the_closed_form():
    A, B, _, _ = lti_system(4, 3, 1, seed=4)
    delta = 0.25
    A_bar, B_bar = ssm.discretize_zoh(A, B, delta)
    identity = torch.eye(4, dtype=F64)
    assert relative_error(A_bar, torch.linalg.matrix_exp(delta * A)) < 1e-14
    closed_form = torch.linalg.solve(delta * A, (A_bar - identity) @ (delta * B))
    assert relative_error(B_bar, closed_form) < 1e-12


def test_zoh_of_a_singular_system_integrates_the_input():
    """A = 0 (pure integrator): no inverse exists, yet Ā = I and B̄ = ΔB exactly."""
    B = torch.randn(3, 2, dtype=F64)
    A_bar, B_bar = ssm.discretize_zoh(torch.zeros(3, 3, dtype=F64), B, 0.7)
    assert torch.allclose(A_bar, torch.eye(3, dtype=F64)) and torch.allclose(B_bar, 0.7 * B)


def test_bilinear_of_a_diagonal_system_is_the_closed_form():
    a = torch.tensor([-0.5, -2.0, -7.0], dtype=F64)
    B = torch.randn(3, 1, dtype=F64)
    delta = 0.1
    A_bar, B_bar = ssm.discretize_bilinear(torch.diag(a), B, delta)
    backward = 1 - delta * a / 2
    assert relative_error(A_bar, torch.diag((1 + delta * a / 2) / backward)) < 1e-14
    assert relative_error(B_bar, (delta / backward)[:, None] * B) < 1e-14


def selective_inputs(batch, dim, dstate, length, seed):
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=F64)  # noqa: E731
    u, B, C = randn(batch, dim, length), randn(batch, dstate, length), randn(batch, dstate, length)
    delta = torch.rand(batch, dim, length, generator=gen, dtype=F64)
    A = -0.5 - torch.rand(dim, dstate, generator=gen, dtype=F64)
    return u, delta, A, B, C, randn(dim)


def test_selective_scan_is_the_recurrence_with_input_dependent_parameters():
    """Mamba per channel d and step t: Ā_t = exp(Δ_t A_d) (ZOH of the diagonal A_d) and
    B̄_t = Δ_t B_t (Mamba's simpler input discretisation), then one recurrence step."""
    u, delta, A, B, C, D = selective_inputs(2, 3, 4, 9, seed=5)
    y_scan = selective_scan(u, delta, A, B, C, D=D)
    y_steps = torch.zeros_like(u)
    for d in range(3):
        state = torch.zeros(2, 4, dtype=F64)
        for t in range(9):
            dt = delta[:, d, t, None, None]  # (b, 1, 1): a different Δ per batch element
            A_d = torch.diag(A[d]).expand(2, 4, 4)  # (b, n, n)
            A_bar, _ = ssm.discretize_zoh(A_d, B[:, :, t, None], delta[:, d, t])
            B_bar = dt * B[:, :, t, None]  # (b, n, 1)
            state, y = ssm.step(
                A_bar, B_bar, C[:, None, :, t], D[d].reshape(1, 1), state, u[:, d, t, None]
            )
            y_steps[:, d, t] = y[:, 0]
    assert relative_error(y_scan, y_steps) < 1e-13


def test_selective_scan_with_constant_parameters_is_a_convolution():
    """Δ, B, C that do not depend on the input make the scan an LTI system again."""
    u, delta, A, B, C, D = selective_inputs(1, 2, 3, 30, seed=6)
    delta = delta[..., :1].expand_as(delta)  # one Δ per channel, every step
    B, C = B[..., :1].expand_as(B), C[..., :1].expand_as(C)
    y_scan = selective_scan(u, delta, A, B, C, D=D)
    for d in range(2):
        A_bar = torch.diag(torch.exp(delta[0, d, 0] * A[d]))
        B_bar = delta[0, d, 0] * B[0, :, :1]  # (n, 1)
        y_conv = ssm.run_convolutional(
            A_bar, B_bar, C[0, :, :1].T, D[d].reshape(1, 1), u[0, d, :, None]
        )
        assert relative_error(y_scan[0, d], y_conv[:, 0]) < 1e-12


def test_the_snippets_of_docs_ssm_run():
    """docs/ssm.md teaches with code; every ```python block runs, in order, and its asserts hold."""
    page = Path(__file__).resolve().parents[2] / "docs" / "ssm.md"
    snippets = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(snippets) >= 5
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile("\n".join(snippets), str(page), "exec"), {})


def test_empty_inputs_give_empty_outputs_and_the_entering_state():
    from mambaverse import kernels as K

    y, last = K.selective_scan(torch.randn(1, 4, 0), torch.rand(1, 4, 0), -torch.rand(4, 3),
                               torch.randn(1, 3, 0), torch.randn(1, 3, 0), return_last_state=True)  # fmt: skip
    assert y.shape == (1, 4, 0) and torch.equal(last, torch.zeros(1, 4, 3))
    empty_batch = K.selective_scan(torch.randn(0, 4, 5), torch.rand(0, 4, 5), -torch.rand(4, 3),
                                   torch.randn(0, 3, 5), torch.randn(0, 3, 5))  # fmt: skip
    assert empty_batch.shape == (0, 4, 5)
    h0 = torch.randn(1, 2, 3, 3)
    y, final = K.ssd_scan(torch.randn(1, 0, 2, 3), torch.rand(1, 0, 2), -torch.rand(2),
                          torch.randn(1, 0, 1, 3), torch.randn(1, 0, 1, 3), 4, initial_states=h0,
                          return_final_states=True)  # fmt: skip
    assert y.shape == (1, 0, 2, 3) and torch.equal(final, h0)
    assert K.causal_conv1d(torch.randn(2, 3, 0), torch.randn(3, 4)).shape == (2, 3, 0)
    with pytest.raises(ValueError, match="width 0"):
        K.causal_conv1d(torch.randn(2, 3, 5), torch.randn(3, 0))


def test_an_integer_decoding_state_is_refused_before_it_is_truncated():
    from mambaverse import kernels as K

    with pytest.raises(TypeError, match=r"state is torch.int64, but it is updated in place"):
        K.selective_state_update(torch.zeros(1, 2, 3, dtype=torch.long), torch.randn(1, 2),
                                 torch.rand(1, 2), -torch.rand(2, 3), torch.randn(1, 3),
                                 torch.randn(1, 3))  # fmt: skip
    with pytest.raises(TypeError, match=r"conv_state is torch.int32"):
        K.causal_conv1d_update(torch.zeros(1, 2, 4, dtype=torch.int32), torch.randn(1, 2),
                               torch.randn(2, 4))  # fmt: skip


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda K: K.gated_rms_norm(
                torch.randn(2, 8), torch.randn(2, 8), torch.randn(8), group_size=2.5
            ),
            "group_size must be an int, got 2.5",
        ),
        (
            lambda K: K.gated_rms_norm(
                torch.randn(2, 8), torch.randn(2, 8), torch.randn(8), group_size=True
            ),
            "group_size must be an int, got True",
        ),
        (
            lambda K: K.cross_entropy(torch.randn(3, 5), torch.tensor([1, 2, 3]), ignore_index=2.9),
            "ignore_index must be an int, got 2.9",
        ),
        (
            lambda K: K.ssd_scan(
                torch.randn(1, 6, 2, 3),
                torch.rand(1, 6, 2),
                -torch.rand(2),
                torch.randn(1, 6, 1, 3),
                torch.randn(1, 6, 1, 3),
                True,
            ),
            "chunk_size must be an int, got True",
        ),
        (
            lambda K: K.add_rms_norm(
                torch.randn(2, 8), None, torch.randn(8), residual_dtype="float32"
            ),
            "residual_dtype must be a float torch.dtype, got 'float32'",
        ),
    ],
)
def test_scalar_arguments_are_not_silently_truncated(call, message):
    from mambaverse import kernels as K

    with pytest.raises(TypeError, match=re.escape(message)):
        call(K)
