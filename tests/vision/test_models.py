"""The vision backbones: published sizes, timm conventions, resolutions, names, bad input."""

from __future__ import annotations

import json
import re

import pytest
import torch

import mambaverse

PUBLISHED = [
    name
    for name in mambaverse.list_models(task="vision")
    if mambaverse.model_info(name, count_params=False)["published"].get("params")
]
MICRO = ["vim_micro", "vmamba_micro", "efficientvmamba_micro", "simba_micro"]
HIERARCHICAL = ["vmamba_micro", "efficientvmamba_micro", "simba_micro"]


def parse_count(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([MB])", str(text)).groups()
    return float(number) * {"M": 1e6, "B": 1e9}[unit]


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def test_every_family_has_published_presets():
    families = {mambaverse.model_info(n, count_params=False)["backbone"] for n in PUBLISHED}
    assert families == {"vim", "vmamba", "efficientvmamba", "simba"}
    assert len(PUBLISHED) == 12


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_count_within_3_percent_of_paper(name):
    published = parse_count(mambaverse.model_info(name, count_params=False)["published"]["params"])
    counted = mambaverse.count_parameters(name)  # built on the meta device
    assert abs(counted - published) / published < 0.03, (counted, published)


@pytest.mark.parametrize("name", MICRO)
def test_timm_conventions(name):
    model = mambaverse.create_model(name, num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    features = model.forward_features(x)
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    assert torch.equal(model.forward_head(features), model(x))
    assert model(x).shape == (2, 10) and model.num_classes == 10
    assert model.get_classifier().out_features == 10
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    cfg = model.default_cfg
    assert cfg["input_size"] == (1, 32, 32) and len(cfg["mean"]) == 1 and cfg["num_classes"] == 10
    assert model.pretrained_cfg is cfg
    no_decay = model.no_weight_decay()
    assert no_decay and all(n.endswith(("A_log", ".D", "pos_embed", "cls_token")) for n in no_decay)
    assert any(n.endswith("A_log") for n in no_decay)


@pytest.mark.parametrize("name", HIERARCHICAL)
def test_features_only_gives_four_scales(name):
    model = mambaverse.create_model(name, features_only=True, img_size=64).eval()
    maps = model(torch.randn(2, 3, 64, 96))
    assert [m.shape[2:] for m in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert [m.shape[1] for m in maps] == [info["num_chs"] for info in model.feature_info]
    assert [info["reduction"] for info in model.feature_info] == [4, 8, 16, 32]
    picked = mambaverse.create_model(name, features_only=True, out_indices=(1, 3)).eval()
    assert [m.shape[2] for m in picked(torch.randn(1, 3, 32, 32))] == [4, 1]


def test_vim_features_only_gives_block_maps():
    model = mambaverse.create_model("vim_micro", features_only=True, out_indices=(0, -1)).eval()
    maps = model(torch.randn(2, 3, 32, 32))
    assert [m.shape for m in maps] == [(2, 64, 4, 4)] * 2
    final, levels = model.forward_intermediates(
        torch.randn(1, 3, 32, 32), indices=2, output_fmt="NHWC"
    )
    assert final.shape == (1, 17, 64) and [m.shape for m in levels] == [(1, 4, 4, 64)] * 2


def test_vim_forward_is_the_papers_block_written_out():
    """Vim's forward (patches as one GEMM, add + norm fused) against the float64 computation of
    hustvl/Vim written out: the patch convolution, the class token in the middle, the position
    embedding, then per block residual = residual + hidden, hidden = mixer(RMSNorm(residual)),
    and the final RMSNorm, each norm by its formula."""
    model = mambaverse.create_model("vim_micro", in_chans=2).double().eval()
    for p in model.parameters():  # no zero or unit parameters left to hide a term
        p.data.add_(0.1 * torch.randn_like(p))
    images = torch.randn(2, 2, 32, 32, dtype=torch.float64)

    def rms(norm, s):
        return s / (s.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt() * norm.weight

    with torch.no_grad():
        patches = model.patch_embed.proj(images).flatten(2).transpose(1, 2)  # (B, 4·4, C)
        middle, cls = patches.shape[1] // 2, model.cls_token.expand(2, -1, -1)
        residual = torch.cat([patches[:, :middle], cls, patches[:, middle:]], 1) + model.pos_embed
        hidden = torch.zeros_like(residual)
        for layer in model.layers:
            residual = residual + hidden
            hidden = layer.mixer(rms(layer.norm, residual), (4, 4), middle)
        expected = rms(model.norm_f, residual + hidden)
        assert torch.allclose(model.forward_features(images), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("stride, size", [(8, (32, 48)), (4, (24, 40))])
def test_patch_embedding_as_a_gemm_is_the_convolution(stride, size):
    """Non-overlapping patches take the GEMM; a convolution whose stride is not its kernel
    (overlapping patches) is run as given."""
    from mambaverse.plugins._vision.layers import embed_patches

    proj = torch.nn.Conv2d(3, 5, 8, stride=stride).double()
    images = torch.randn(2, 3, *size, dtype=torch.float64)
    expected = proj(images).flatten(2).transpose(1, 2)
    assert torch.allclose(embed_patches(proj, images), expected, rtol=0, atol=1e-12)


def test_vim_takes_other_resolutions_by_resizing_position_embeddings():
    model = mambaverse.create_model("vim_micro", num_classes=3).eval()
    for size in [(32, 32), (48, 64), (24, 40)]:
        assert model(torch.randn(1, 3, *size)).shape == (1, 3)
    assert model.pos_embed.shape == (1, 17, 64)  # the stored grid is unchanged


def test_vim_position_embedding_resize_keeps_the_class_row_and_the_grid():
    from mambaverse.plugins.vim.pos_embed import resize_pos_embed

    grid = torch.arange(16.0).view(1, 4, 4)
    cls = torch.full((1, 1), -1.0)
    pos = torch.cat([grid.flatten(1)[:, :8], cls, grid.flatten(1)[:, 8:]], dim=1)[
        ..., None
    ]  # (1, 17, 1)
    assert torch.equal(resize_pos_embed(pos, (4, 4), (4, 4)), pos)
    bigger = resize_pos_embed(pos, (4, 4), (6, 8))
    assert bigger.shape == (1, 49, 1) and bigger[0, 24, 0] == -1.0
    cells = torch.cat([bigger[:, :24], bigger[:, 25:]], dim=1).view(6, 8)
    assert cells[0, 0] < cells[-1, -1]  # still increasing from the top-left to the bottom-right


@pytest.mark.parametrize("name", HIERARCHICAL)
def test_unpooled_hierarchical_models_classify_every_position(name):
    model = mambaverse.create_model(name, global_pool="", num_classes=5).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(images)  # (B, C, H, W)
        expected = torch.einsum("bchw,kc->bkhw", features, model.head.weight)
        expected = expected + model.head.bias[:, None, None]
        assert torch.allclose(model(images), expected, atol=1e-5)
        assert torch.equal(model.forward_head(features, pre_logits=True), features)


@pytest.mark.parametrize("name", HIERARCHICAL)
def test_hierarchical_models_take_any_multiple_of_the_stride(name):
    model = mambaverse.create_model(name, num_classes=4).eval()
    assert model(torch.randn(1, 3, 64, 32)).shape == (1, 4)
    with pytest.raises(
        ValueError, match=r"image size 48×40 is not divisible by the model's stride 32"
    ):
        model(torch.randn(1, 3, 48, 40))


def test_vim_rejects_sizes_the_patch_does_not_divide():
    with pytest.raises(
        ValueError, match="not divisible by the model's stride 8; use a multiple of 8"
    ):
        mambaverse.create_model("vim_micro")(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="not divisible"):
        mambaverse.create_model("vim_micro", img_size=30)


@pytest.mark.parametrize("name", MICRO)
def test_wrong_channel_count_is_named(name):
    model = mambaverse.create_model(name)
    with pytest.raises(ValueError, match=r"expected 3 input channels \(in_chans=3\), got 1"):
        model(torch.randn(1, 1, 32, 32))


def test_channels_last_and_integer_images_are_named():
    model = mambaverse.create_model("vim_micro")
    with pytest.raises(
        ValueError,
        match=r"got 32 .*they look NHWC \(batch, height, width, channels\): pass x.permute",
    ):
        model(torch.randn(2, 32, 32, 3))
    with pytest.raises(ValueError, match=r"expected floating-point images, got torch.uint8"):
        model(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"images are torch.float64 but the model's weights are "):
        model(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts for the model: allowed
        assert model(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"scan": "cros2d"}, "unknown scan 'cros2d'.*'cross2d'"),
        ({"mixer": "mamba3"}, "unknown mixer 'mamba3'.*'mamba'"),
    ],
)
def test_unknown_scan_or_mixer_names_the_nearest(override, message):
    with pytest.raises(mambaverse.UnknownNameError, match=message):
        mambaverse.create_model("vim_micro", **override)


SWAPS = [
    ("vim_micro", {"scan": "cross2d"}),
    (
        "vim_micro",
        {"scan": "atrous", "mixer": "mamba2", "mixer_config": {"headdim": 16, "chunk_size": 8}},
    ),
    ("vim_micro", {"mixer": "attention", "mixer_config": {"num_heads": 4, "causal": False}}),
    ("vmamba_micro", {"scan": "bidirectional"}),
    ("vmamba_micro", {"scan": "atrous", "mixer": "attention", "mixer_config": {"num_heads": 2}}),
    ("efficientvmamba_micro", {"scan": "cross2d"}),
    ("efficientvmamba_micro", {"step_size": 3}),
    ("simba_micro", {"scan": "bidirectional", "channel_mixer": "mlp"}),
    ("simba_micro", {"mixer": "mamba2", "mixer_config": {"headdim": 8, "chunk_size": 8}}),
]


@pytest.mark.parametrize(
    ("name", "override"),
    SWAPS,
    ids=[f"{n}-{'-'.join(map(str, o.values()))}"[:60] for n, o in SWAPS],
)
def test_scan_and_mixer_swap_by_name(name, override):
    model = mambaverse.create_model(name, num_classes=10, **override)
    x = torch.randn(2, 3, 32, 32)
    loss = model(x).logsumexp(-1).mean()
    loss.backward()
    assert torch.isfinite(loss)
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused


def test_scan_choice_changes_the_function():
    torch.manual_seed(1)
    a = mambaverse.create_model("vim_micro", scan="bidirectional").eval()
    b = mambaverse.create_model("vim_micro", scan="cross2d").eval()
    state = {
        k: v
        for k, v in a.state_dict().items()
        if k in b.state_dict() and v.shape == b.state_dict()[k].shape
    }
    b.load_state_dict(state, strict=False)
    x = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(a(x), b(x))


@pytest.mark.parametrize("name", MICRO)
def test_grad_checkpointing_gives_the_same_gradients(name):
    model = mambaverse.create_model(name, num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).pow(2).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert all(torch.allclose(g0, g1, rtol=1e-4, atol=1e-6) for g0, g1 in zip(*grads))


def test_model_kernels_config_is_applied(monkeypatch):
    # A registered implementation that cannot run on CPU tensors: the forward asks for it.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = mambaverse.create_model("vim_micro", kernels={"selective_scan": "triton"})
    with pytest.raises(mambaverse.KernelUnavailableError, match="selective_scan=triton"):
        model(torch.randn(1, 3, 32, 32))


def test_enclosing_kernel_choices_reach_a_model_without_its_own():
    model = mambaverse.create_model("vmamba_micro")
    with (
        mambaverse.kernel_choices({"selective_scan": "no_such_impl"}),
        pytest.raises(LookupError, match="no_such_impl"),
    ):
        model(torch.randn(1, 3, 32, 32))


def test_save_and_load_round_trip(tmp_path):
    model = mambaverse.create_model("vmamba_micro", num_classes=5, scan="bidirectional").eval()
    mambaverse.save_pretrained(model, tmp_path)
    loaded = mambaverse.load_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))


def test_loading_a_path_that_is_not_a_checkpoint_says_which_it_is(tmp_path):
    with pytest.raises(mambaverse.ConfigError, match=r"nope: does not exist \(a checkpoint"):
        mambaverse.load_pretrained(tmp_path / "nope")
    with pytest.raises(mambaverse.ConfigError, match=r"not a checkpoint directory \(no config"):
        mambaverse.load_pretrained(tmp_path)


def test_a_checkpoint_whose_kernels_are_not_registered_here_says_how_to_load_it(tmp_path):
    model = mambaverse.create_model("vim_micro")
    mambaverse.save_pretrained(model, tmp_path)
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config["mambaverse"]["config"]["kernels"] = {"selective_scan": "cuda_fast"}  # another machine's
    config_file.write_text(json.dumps(config))
    with pytest.raises(mambaverse.UnknownNameError, match=r"'cuda_fast'.*kernels=None"):
        mambaverse.load_pretrained(tmp_path)
    loaded = mambaverse.load_pretrained(tmp_path, kernels=None).eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))
