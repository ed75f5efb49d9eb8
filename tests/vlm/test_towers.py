"""Vision towers by name: features match the libraries' own paths, fusion, weights, bad names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mambaverse.errors import ConfigError, UnknownNameError
from mambaverse.plugins.cobra.towers import build_towers

TIMM_VIT = {
    "name": "timm:vit_small_patch14_dinov2",
    "config": {"depth": 3, "embed_dim": 48, "num_heads": 2},
}
SIGLIP_VIT = {
    "name": "timm:vit_base_patch16_siglip_224",
    "config": {"depth": 3, "embed_dim": 32, "num_heads": 2},
}


def normalised(tower, images):
    """The tower's input, computed here from the timm/open_clip preprocessing facts."""
    resized = F.interpolate(images, size=tower.img_size, mode="bilinear", align_corners=False)
    return (resized - tower.mean) / tower.std


def test_timm_tower_gives_the_second_to_last_block_as_cobra_reads_it():
    torch.manual_seed(0)
    tower = build_towers([TIMM_VIT], img_size=28).towers[0].eval()
    vit = tower.model
    images = torch.rand(2, 3, 40, 40)
    # Cobra: featurizer.get_intermediate_layers(x, n={len(blocks) - 2}), prefix tokens dropped.
    (expected,) = vit.get_intermediate_layers(normalised(tower, images), n={len(vit.blocks) - 2})
    torch.testing.assert_close(tower(images), expected)
    assert tower(images).shape == (2, 4, 48)  # (28 / 14)² patches, embed_dim channels
    assert tuple(tower.mean.flatten().tolist()) == pytest.approx((0.485, 0.456, 0.406))


def test_open_clip_tower_matches_a_hook_on_its_transformer():
    torch.manual_seed(0)
    tower = build_towers("open_clip:ViT-S-32", img_size=64).towers[0].eval()
    visual = tower.model
    captured = {}
    block = visual.transformer.resblocks[-2]
    handle = block.register_forward_hook(lambda m, i, o: captured.update(out=o))
    images = torch.rand(2, 3, 64, 64)
    visual(normalised(tower, images))
    handle.remove()
    expected = captured["out"][:, 1:]  # drop the class token: (B, 2·2, width)
    torch.testing.assert_close(tower(images), expected)
    assert tower.num_features == visual.transformer.width == 384


def test_mambaverse_tower_gives_a_patch_grid():
    tower = build_towers("vim_micro", img_size=32).towers[0]
    features = tower(torch.rand(2, 3, 32, 32))
    patch = tower.model.patch_size
    assert features.shape == (2, (32 // patch) ** 2, tower.num_features)


def test_fused_towers_need_the_same_patch_grid():
    fused = build_towers([TIMM_VIT, SIGLIP_VIT], img_size=28)
    with pytest.raises(
        ValueError, match=r"different numbers of patches .*vit_small_patch14_dinov2: 4, .*: 1"
    ):
        fused(torch.rand(1, 3, 28, 28))


def test_fused_towers_concatenate_dinov2_and_siglip_features_channel_wise():
    torch.manual_seed(0)
    siglip_14 = {**SIGLIP_VIT, "config": {**SIGLIP_VIT["config"], "patch_size": 14}}
    fused = build_towers([TIMM_VIT, siglip_14], img_size=56).eval()  # both 4×4 patches
    dino, siglip = fused.towers
    assert siglip.mean.flatten().tolist() == [0.5, 0.5, 0.5]  # SigLIP's own normalisation
    images = torch.rand(2, 3, 64, 64)
    (dino_features,) = dino.model.get_intermediate_layers(normalised(dino, images), n={1})
    (siglip_features,) = siglip.model.get_intermediate_layers(normalised(siglip, images), n={1})
    out = fused(images)
    assert out.shape == (2, 16, 48 + 32) and fused.num_features == 80
    torch.testing.assert_close(out, torch.cat([dino_features, siglip_features], dim=-1))


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("timm:vit_small_patch14_dinov3x", "timm:vit_small_patch14_dinov2"),
        ("open_clip:ViT-S-322", "open_clip:ViT-S-32"),
        ("vim_micr", "vim_micro"),
        ("timmm:vit_tiny_patch16_224", "did you mean 'timm:vit_tiny_patch16_224'"),  # the source
    ],
)
def test_unknown_tower_names_list_the_nearest(name, suggestion):
    with pytest.raises(UnknownNameError, match=suggestion):
        build_towers(name, img_size=32)


def test_local_weights_are_loaded_and_checked(tmp_path):
    torch.manual_seed(0)
    source = build_towers("open_clip:ViT-S-32", img_size=32).towers[0].eval()
    # A full CLIP checkpoint names the tower's tensors "visual.*"; the text tower is ignored.
    tensors = {f"visual.{k}": v.contiguous() for k, v in source.model.state_dict().items()}
    tensors["text_projection"] = torch.zeros(2, 2)
    save_file(tensors, tmp_path / "clip.safetensors")
    loaded = build_towers(
        {"name": "open_clip:ViT-S-32", "weights": str(tmp_path / "clip.safetensors")}, 32
    )
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.towers[0].eval()(images), source(images))

    timm_source = build_towers([TIMM_VIT], 28).towers[0].eval()
    save_file(timm_source.model.state_dict(), tmp_path / "vit.safetensors")
    timm_loaded = build_towers([{**TIMM_VIT, "weights": str(tmp_path / "vit.safetensors")}], 28)
    torch.testing.assert_close(timm_loaded.towers[0].eval()(images), timm_source(images))

    with pytest.raises(ConfigError, match=r"vision tower 'vim_micro': weights .* do not exist"):
        build_towers({"name": "vim_micro", "weights": str(tmp_path / "missing.safetensors")}, 32)
    with pytest.raises(ConfigError, match="do not fit the VisionMamba"):
        build_towers({"name": "vim_micro", "weights": str(tmp_path / "vit.safetensors")}, 32)


def test_bad_tower_entries_are_explained():
    with pytest.raises(ConfigError, match="unknown tower key 'wieghts'"):
        build_towers({"name": "vim_micro", "wieghts": "x"}, 32)
    with pytest.raises(ConfigError, match="expected a tower name"):
        build_towers([3], 32)
