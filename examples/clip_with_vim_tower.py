"""A CLIP model whose image tower is a mambaverse Vision Mamba, through open_clip's timm tower.

Offline and randomly initialised: nothing is downloaded (open_clip's BPE vocabulary ships with
the package). Importing ``mambaverse.plugins._vision.timm_registry`` registers every mambaverse
vision preset in timm's registry; open_clip's ``TimmModel`` then builds the tower with
``timm.create_model("vim_tiny")`` and replaces its head with ``reset_classifier(0, "token")``
plus a linear projection to the joint embedding.

    python examples/clip_with_vim_tower.py                  # vim_tiny tower, 64×64 images
    python examples/clip_with_vim_tower.py vmamba_tiny 96   # any vision preset, any valid size
"""

from __future__ import annotations

import sys

import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

import mambaverse.plugins._vision.timm_registry  # noqa: F401  (registers the presets in timm)


def build_clip(
    tower: str = "vim_tiny", embed_dim: int = 256, text_width: int = 256, text_layers: int = 4
) -> CLIP:
    """CLIP(image tower = the mambaverse preset ``tower``, text = a small open_clip transformer)."""
    vision = CLIPVisionCfg(
        timm_model_name=tower,
        timm_model_pretrained=False,
        # Vim summarises an image in its class token; the hierarchical models average their map.
        timm_pool="token" if tower.startswith("vim") else "avg",
        timm_proj="linear",
    )
    text = CLIPTextCfg(
        context_length=77, vocab_size=49408, width=text_width, heads=4, layers=text_layers
    )
    return CLIP(embed_dim=embed_dim, vision_cfg=vision, text_cfg=text)


def main(tower: str = "vim_tiny", size: int = 64) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_clip(tower).eval()
    images = torch.randn(2, 3, size, size)  # Vim resizes its position embeddings to any size
    texts = open_clip.tokenize(["a photo of a cat", "a handwritten digit seven"])
    with torch.no_grad():
        image_features = model.encode_image(images, normalize=True)  # (2, embed_dim)
        text_features = model.encode_text(texts, normalize=True)
        logits = model.logit_scale.exp() * image_features @ text_features.T  # (images, texts)
    towers = sum(p.numel() for p in model.visual.parameters()) / 1e6
    print(
        f"CLIP with a {tower} image tower ({towers:.1f}M parameters): image-text logits {logits.tolist()}"
    )
    return logits


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "vim_tiny",
        int(sys.argv[2]) if len(sys.argv) > 2 else 64,
    )
