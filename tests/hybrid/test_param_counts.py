"""The published presets have exactly the parameters of transformers' models built from the
checkpoints' official configs (both on the meta device, so Jamba's 52B costs no memory)."""

from __future__ import annotations

import pytest
import torch

import mambaverse

from .hf_models import hf_classes

pytest.importorskip("transformers")


def zamba2_layer_types(pattern: str) -> list[str]:
    return ["hybrid" if code == "h" else "mamba" for code in pattern.replace(" ", "")]


# preset -> (model_type, the checkpoint's config.json values that differ from transformers' defaults)
PUBLISHED = {
    # ai21labs/Jamba-v0.1: JambaConfig's defaults are this checkpoint.
    "jamba_v0.1": ("jamba", {}),
    # ibm-fms/Bamba-9B
    "bamba_9b": (
        "bamba",
        dict(
            vocab_size=128256,
            attn_layer_indices=[9, 18, 27],
            mamba_d_head=64,
            mamba_d_state=128,
            mamba_n_heads=128,
        ),
    ),
    # Zyphra/Zamba-7B-v1: ZambaConfig's defaults are this checkpoint.
    "zamba_7b": ("zamba", {}),
    # Zyphra/Zamba2-1.2B
    "zamba2_1.2b": (
        "zamba2",
        dict(
            hidden_size=2048,
            num_hidden_layers=38,
            layers_block_type=zamba2_layer_types("mmmmmh" * 6 + "mm"),
            mamba_d_state=128,
            n_mamba_heads=64,
            intermediate_size=8192,
            num_attention_heads=32,
            num_mem_blocks=1,
            adapter_rank=128,
            use_shared_attention_adapter=True,
            use_mem_rope=True,
        ),
    ),
    # Zyphra/Zamba2-2.7B: hybrid_layer_ids [6, 12, 18, 24, 30, 36, 42, 47, 51]
    "zamba2_2.7b": (
        "zamba2",
        dict(
            hidden_size=2560,
            num_hidden_layers=54,
            layers_block_type=[
                "hybrid" if i in (6, 12, 18, 24, 30, 36, 42, 47, 51) else "mamba" for i in range(54)
            ],
            mamba_d_state=64,
            n_mamba_heads=80,
            intermediate_size=10240,
            num_attention_heads=32,
            num_mem_blocks=2,
            adapter_rank=128,
        ),
    ),
    # Zyphra/Zamba2-7B
    "zamba2_7b": (
        "zamba2",
        dict(
            hidden_size=3584,
            num_hidden_layers=81,
            layers_block_type=zamba2_layer_types("mmmmmmh mmmmh" + " mmmmmh" * 11 + " mmm"),
            mamba_d_state=64,
            n_mamba_heads=112,
            mamba_ngroups=2,
            intermediate_size=14336,
            num_attention_heads=32,
            num_mem_blocks=2,
            adapter_rank=128,
            use_mem_rope=True,
        ),
    ),
}


@pytest.mark.parametrize("preset", list(PUBLISHED))
def test_published_preset_has_transformers_parameter_count(preset):
    from transformers.utils import logging

    logging.set_verbosity_error()
    model_type, config = PUBLISHED[preset]
    config_class, model_class = hf_classes(model_type)
    with torch.device("meta"):
        reference = model_class(config_class(**config))
    expected = sum(p.numel() for p in reference.parameters())
    assert mambaverse.count_parameters(preset) == expected
