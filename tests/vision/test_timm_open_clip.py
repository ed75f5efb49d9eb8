"""mambaverse vision presets through timm's registry, and as open_clip's timm image tower."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")
import mambaverse.plugins._vision.timm_registry as timm_registry  # noqa: E402  (after the skip)

EXAMPLE = Path(__file__).parents[2] / "examples" / "clip_with_vim_tower.py"


def test_every_vision_preset_is_a_timm_model():
    names = set(timm.list_models("*"))
    assert {"vim_tiny", "vmamba_tiny", "efficientvmamba_t", "simba_s", "vim_micro"} <= names
    assert "mamba_130m" not in names  # language models are not registered
    assert timm_registry.register_timm_models() == []  # registering again adds nothing


def test_timm_create_model_vim_tiny_runs():
    model = timm.create_model("vim_tiny", num_classes=10).eval()
    assert model.num_classes == 10 and model.pretrained_cfg["architecture"] == "vim_tiny"
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)  # a small input keeps it fast


def test_timm_features_only_and_errors():
    model = timm.create_model("vmamba_micro", features_only=True, out_indices=(2, 3)).eval()
    assert [m.shape[1:] for m in model(torch.randn(1, 3, 32, 32))] == [(64, 2, 2), (128, 1, 1)]
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("vim_micro", pretrained=True)


def test_open_clip_model_with_a_vim_tower():
    spec = importlib.util.spec_from_file_location("clip_with_vim_tower", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model = example.build_clip("vim_micro", embed_dim=32, text_width=32, text_layers=1)
    assert model.visual.trunk.global_pool == "token" and model.visual.trunk.num_classes == 0
    logits = example.main("vim_tiny", size=32)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
