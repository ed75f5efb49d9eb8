"""Independent float64 references for the vision tests, written from the papers' code.

Nothing here imports the walker or the scan plugin: the orders are the official tensor
operations (flip, transpose, strided slices), and the selective scan is the step-by-step loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequential_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    delta_bias: torch.Tensor,
) -> torch.Tensor:
    """Mamba's ``selective_scan_ref`` with softplus: u, delta (b, d, l); A (d, n); B, C (b, n, l)."""
    delta = F.softplus(delta + delta_bias[:, None])
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = (
            torch.exp(delta[:, :, t, None] * A) * h
            + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        )
        ys.append((h * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, dim=2) + D[:, None] * u


def ssm_direction(ssm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One direction of Mamba's SSM path (``mamba_inner_fn_no_out_proj`` without the gate):
    x (b, d, l) -> causal depthwise conv + silu (if the SSM has one) -> x_proj -> dt_proj -> scan."""
    if ssm.conv1d is not None:
        width = ssm.conv1d.weight.shape[-1]
        x = F.silu(
            F.conv1d(
                F.pad(x, (width - 1, 0)), ssm.conv1d.weight, ssm.conv1d.bias, groups=x.shape[1]
            )
        )
    dt, B, C = ssm.x_proj(x.transpose(1, 2)).split([ssm.dt_rank, ssm.d_state, ssm.d_state], dim=-1)
    delta = (dt @ ssm.dt_proj.weight.T).transpose(1, 2)
    A = -torch.exp(ssm.A_log)
    return sequential_scan(
        x, delta, A, B.transpose(1, 2), C.transpose(1, 2), ssm.D, ssm.dt_proj.bias
    )


def vim_v2_mixer(mixer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """hustvl/Vim ``Mamba.forward`` with ``bimamba_type="v2"`` and ``if_divide_out=True`` on the
    whole token sequence (class token included, wherever it sits):

        out   = scan_f(x) * silu(z);   out_b = scan_b(x.flip(-1)) * silu(z.flip(-1))
        y     = out_proj((out + out_b.flip(-1)) / 2)
    """
    x, z = mixer.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (b, d, l) each
    forward = ssm_direction(mixer.ssms[0], x) * F.silu(z)
    backward = ssm_direction(mixer.ssms[1], x.flip(-1)) * F.silu(z.flip(-1))
    return mixer.out_proj(((forward + backward.flip(-1)) / 2).transpose(1, 2))


def _ss2d_input(mixer: torch.nn.Module, tokens: torch.Tensor, grid: tuple[int, int]):
    """in_proj (x [, z]) -> depthwise conv on the (B, d, H, W) grid -> silu."""
    xz = mixer.in_proj(tokens)
    x, z = xz.chunk(2, dim=-1) if mixer.gate else (xz, None)
    B, (H, W) = tokens.shape[0], grid
    x = x.transpose(1, 2).reshape(B, -1, H, W)
    return F.silu(mixer.conv2d(x)), z


def _ss2d_output(mixer: torch.nn.Module, y: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    """y (B, d, H, W) -> out_norm over channels -> [· silu(z)] -> out_proj."""
    y = mixer.out_norm(y.flatten(2).transpose(1, 2))
    if z is not None:
        y = y * F.silu(z)
    return mixer.out_proj(y)


def vmamba_ss2d(
    mixer: torch.nn.Module, tokens: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """MzeroMiko/VMamba SS2D ``forward_corev2`` with ``cross_scan_fwd`` / ``cross_merge_fwd``:

    xs = [x.flatten(HW), x.transpose(H, W).flatten(), and both flipped]   (B, 4, d, L)
    y  = ys[0] + ys[2].flip + (ys[1] + ys[3].flip) transposed back
    """
    x, z = _ss2d_input(mixer, tokens, grid)
    B, d, H, W = x.shape
    rows, columns = x.flatten(2), x.transpose(2, 3).flatten(2)
    xs = [rows, columns, rows.flip(-1), columns.flip(-1)]
    ys = [ssm_direction(ssm, seq) for ssm, seq in zip(mixer.ssms, xs)]
    row_part = ys[0] + ys[2].flip(-1)
    column_part = (ys[1] + ys[3].flip(-1)).reshape(B, d, W, H).transpose(2, 3).reshape(B, d, H * W)
    y = (row_part + column_part).reshape(B, d, H, W)
    return _ss2d_output(mixer, y, z)


def efficientvmamba_es2d(
    mixer: torch.nn.Module, tokens: torch.Tensor, grid: tuple[int, int], step: int = 2
) -> torch.Tensor:
    """TerryPei/EfficientVMamba SS2D with ``EfficientScan`` / ``EfficientMerge`` (H, W multiples
    of ``step`` here, so no padding):

        xs[0] = x[:, :, ::s, ::s]            xs[1] = x.transpose(2, 3)[:, :, ::s, 1::s]
        xs[2] = x[:, :, ::s, 1::s]           xs[3] = x.transpose(2, 3)[:, :, 1::s, 1::s]
    """
    x, z = _ss2d_input(mixer, tokens, grid)
    B, d, H, W = x.shape
    s = step
    xt = x.transpose(2, 3)
    subgrids = [x[:, :, ::s, ::s], xt[:, :, ::s, 1::s], x[:, :, ::s, 1::s], xt[:, :, 1::s, 1::s]]
    ys = [ssm_direction(ssm, g.flatten(2)) for ssm, g in zip(mixer.ssms, subgrids)]
    h, w = H // s, W // s
    y = x.new_zeros(B, d, H, W)
    y[:, :, ::s, ::s] = ys[0].reshape(B, d, h, w)
    y[:, :, 1::s, ::s] = ys[1].reshape(B, d, w, h).transpose(2, 3)
    y[:, :, ::s, 1::s] = ys[2].reshape(B, d, h, w)
    y[:, :, 1::s, 1::s] = ys[3].reshape(B, d, w, h).transpose(2, 3)
    return _ss2d_output(mixer, y, z)


def einfft(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """badripatro/Simba ``EinFFT.forward``, with real arithmetic on (real, imaginary) pairs."""
    B, N, C = x.shape
    nb, bs = module.num_blocks, module.block_size
    X = torch.fft.fft2(x.view(B, N, nb, bs), dim=(1, 2), norm="ortho")
    W1, W2, b1, b2 = (
        module.complex_weight_1,
        module.complex_weight_2,
        module.complex_bias_1,
        module.complex_bias_2,
    )

    def multiply(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...bd,bdk->...bk", a, w)

    real1 = F.relu(multiply(X.real, W1[0]) - multiply(X.imag, W1[1]) + b1[0])
    imag1 = F.relu(multiply(X.real, W1[1]) + multiply(X.imag, W1[0]) + b1[1])
    real2 = multiply(real1, W2[0]) - multiply(imag1, W2[1]) + b2[0]
    imag2 = multiply(real1, W2[1]) + multiply(imag1, W2[0]) + b2[1]
    out = F.softshrink(torch.stack([real2, imag2], dim=-1), lambd=module.sparsity_threshold)
    y = torch.fft.ifft2(torch.view_as_complex(out.contiguous()), dim=(1, 2), norm="ortho")
    return y.real.reshape(B, N, C)
