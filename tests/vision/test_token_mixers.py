"""The scan-aware token mixers against float64 re-implementations of the papers' code."""

from __future__ import annotations

import pytest
import torch

import mambaverse
from mambaverse.plugins._vision import scan_mamba
from mambaverse.plugins._vision.grid_mixer import build_grid_mixer

from . import oracles

VIM = {"d_state": 4, "d_conv": 4, "expand": 2, "conv": "1d", "gate": True, "divide_out": True}
VMAMBA = {
    "d_state": 2,
    "d_conv": 3,
    "expand": 1.5,
    "conv": "2d",
    "conv_bias": False,
    "gate": False,
    "out_norm": True,
}
EVMAMBA = {
    "d_state": 4,
    "d_conv": 3,
    "expand": 2,
    "conv": "2d",
    "conv_bias": True,
    "gate": True,
    "out_norm": True,
}


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    return torch.allclose(actual, expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("grid", [(4, 4), (3, 3), (2, 5)])
def test_vim_bidirectional_block_matches_official_v2(grid):
    """Even and odd token counts: the class token sits at N // 2 and the flipped sequence carries
    it between the same two patches, as ``x.flip`` does in hustvl/Vim."""
    mixer = build_grid_mixer(16, "bidirectional", "mamba", mamba_options=VIM).double()
    cls_index = grid[0] * grid[1] // 2
    hidden = torch.randn(2, grid[0] * grid[1] + 1, 16, dtype=torch.float64)
    assert close(mixer(hidden, grid, cls_index), oracles.vim_v2_mixer(mixer, hidden))


def test_vim_block_without_class_token_matches_official_v2():
    mixer = build_grid_mixer(8, "bidirectional", "mamba", mamba_options=VIM).double()
    hidden = torch.randn(2, 12, 8, dtype=torch.float64)
    assert close(mixer(hidden, (3, 4)), oracles.vim_v2_mixer(mixer, hidden))


def test_vmamba_ss2d_matches_official_cross_scan():
    mixer = build_grid_mixer(12, "cross2d", "mamba", mamba_options=VMAMBA).double()
    tokens = torch.randn(2, 4 * 6, 12, dtype=torch.float64)
    assert close(mixer(tokens, (4, 6)), oracles.vmamba_ss2d(mixer, tokens, (4, 6)))


def test_efficientvmamba_es2d_matches_official_atrous_scan():
    mixer = build_grid_mixer(8, "atrous", "mamba", {"step": 2}, mamba_options=EVMAMBA).double()
    tokens = torch.randn(2, 4 * 6, 8, dtype=torch.float64)
    assert close(mixer(tokens, (4, 6)), oracles.efficientvmamba_es2d(mixer, tokens, (4, 6)))


def test_causal_scan_is_exactly_the_mamba_mixer():
    """SiMBA's token mixer: one row-major walk makes the block the 1-D Mamba block."""
    options = {"d_state": 4, "d_conv": 4, "expand": 2}
    on_grid = build_grid_mixer(
        8, "causal", "mamba", mamba_options={**options, "conv": "1d"}
    ).double()
    plain = mambaverse.create_mixer("mamba", 8, **options).double()
    state = {k.replace("ssms.0.", "ssm."): v for k, v in on_grid.state_dict().items()}
    plain.load_state_dict(state)
    tokens = torch.randn(2, 3 * 5, 8, dtype=torch.float64)
    assert close(on_grid(tokens, (3, 5)), plain(tokens))


@pytest.mark.parametrize(
    ("scan", "options", "grid", "with_cls"),
    [("bidirectional", VIM, (3, 4), True), ("cross2d", VMAMBA, (4, 3), False)],
)
def test_permutation_scans_run_as_one_stacked_scan_with_the_walkers_gradients(
    scan, options, grid, with_cls, monkeypatch
):
    """Scans whose walks visit every token once take one gather and one stacked scan (its
    sequences padded from 13 or 12 to 16 steps); values and all gradients equal the per-walk
    path (walk, K SSMs, unwalk) on the same weights."""
    monkeypatch.setitem(scan_mamba.SCAN_STEPS_MULTIPLE, "cpu", 16)  # padded as on CUDA
    mixer = build_grid_mixer(8, scan, "mamba", mamba_options=options).double()
    cls_index = grid[0] * grid[1] // 2 if with_cls else None
    tokens = torch.randn(2, grid[0] * grid[1] + with_cls, 8, dtype=torch.float64)
    orders = mixer.walker.token_orders(grid, cls_index, tokens.device)
    assert orders is not None
    order, inverse = orders
    walked = mixer.walker.walk(tokens, grid, cls_index)
    assert torch.equal(walked, tokens[:, order])
    assert torch.equal(order.gather(1, inverse), torch.arange(tokens.shape[1]).expand_as(order))
    padded, same_inverse = mixer.walker.token_orders(grid, cls_index, tokens.device, 16)
    assert padded.shape == (order.shape[0], 16) and torch.equal(same_inverse, inverse)
    assert torch.equal(padded[:, : order.shape[1]], order)
    assert (padded[:, order.shape[1] :] == tokens.shape[1]).all()  # padding: no token

    def run(permuted: bool) -> list[torch.Tensor]:
        mixer.zero_grad()
        x = tokens.clone().requires_grad_()
        if permuted:
            out = mixer(x, grid, cls_index)
        else:
            mixer.walker.token_orders = lambda *args: None  # the general path
            out = mixer(x, grid, cls_index)
            del mixer.walker.token_orders
        out.backward(torch.randn_like(out, generator=torch.Generator().manual_seed(1)))
        return [out.detach(), x.grad, *(p.grad.clone() for p in mixer.parameters())]

    for fast, general in zip(run(True), run(False), strict=True):
        assert close(fast, general)


@pytest.mark.parametrize("tokens", [11, 14])
def test_token_count_off_the_grid_is_named(tokens):
    """The stacked path gathers by index: a wrong count must stop before (on CUDA an
    out-of-range gather is a device assert that ends the process's CUDA context)."""
    mixer = build_grid_mixer(8, "bidirectional", "mamba", mamba_options=VIM)
    with pytest.raises(ValueError, match=r"3×4 grid \+ a class token is \(batch, 13, channels\)"):
        mixer(torch.randn(2, tokens, 8), (3, 4), 6)


def test_stacked_path_calls_wrapped_or_hooked_projections():
    """The stacked path computes plain nn.Linear projections itself; hooks (and wrapped layers,
    such as LoRA) must still run."""
    mixer = build_grid_mixer(8, "bidirectional", "mamba", mamba_options=VIM).double()
    tokens = torch.randn(2, 13, 8, dtype=torch.float64)
    plain = mixer(tokens, (3, 4), 6)
    mixer.in_proj.register_forward_hook(lambda module, args, out: 2 * out)
    mixer.out_proj.register_forward_hook(lambda module, args, out: out + 1)
    hooked = mixer(tokens, (3, 4), 6)
    mixer.walker.token_orders = lambda *args: None  # the per-walk path, nn.Linear called as usual
    assert close(hooked, mixer(tokens, (3, 4), 6)) and not close(hooked, plain)


def test_padded_walks_keep_the_general_path():
    walker = build_grid_mixer(8, "atrous", "mamba", {"step": 2}, mamba_options=EVMAMBA).walker
    assert walker.token_orders((4, 6), None, torch.device("cpu")) is None
    assert walker.token_orders((3, 3), 4, torch.device("cpu")) is None


def test_other_token_mixers_run_along_every_walk_and_average():
    mixer = build_grid_mixer(8, "cross2d", "attention", mixer_config={"num_heads": 2}).double()
    attention = mixer.mixer
    tokens = torch.randn(2, 3 * 4, 8, dtype=torch.float64)
    grid = tokens.reshape(2, 3, 4, 8)
    rows, columns = grid.flatten(1, 2), grid.transpose(1, 2).flatten(1, 2)
    outputs = [
        attention(rows),
        attention(columns).reshape(2, 4, 3, 8).transpose(1, 2).flatten(1, 2),
        attention(rows.flip(1)).flip(1),
        attention(columns.flip(1)).flip(1).reshape(2, 4, 3, 8).transpose(1, 2).flatten(1, 2),
    ]
    assert close(mixer(tokens, (3, 4)), sum(outputs) / 4)


def test_channel_mixer_is_refused_as_token_mixer():
    with pytest.raises(mambaverse.ConfigError, match="mixes channels; a token mixer is needed"):
        build_grid_mixer(8, "causal", "einfft")


def test_unknown_mixer_option_lists_valid_keys():
    with pytest.raises(mambaverse.ConfigError, match=r"d_stat.*did you mean 'd_state'"):
        build_grid_mixer(8, "causal", "mamba", mixer_config={"d_stat": 4})
