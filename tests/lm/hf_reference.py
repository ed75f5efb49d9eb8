"""Random transformers Mamba / Mamba-2 causal LMs, the independent reference for mamba_lm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# No special tokens: a random model must not stop generating early or pad.
NO_SPECIAL_TOKENS = {"eos_token_id": None, "pad_token_id": None, "bos_token_id": None}


def random_hf_lm(model_type: str, seed: int = 0, **config: Any) -> Any:
    """A transformers MambaForCausalLM ("mamba") or Mamba2ForCausalLM ("mamba2"), float32, eval.

    Every parameter gets noise on top of transformers' init, so that ones (norm weights, D) and
    regular values (A_log = log(1..N)) cannot hide a mistake in how they are used.
    """
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    config_class, model_class = {
        "mamba": (MambaConfig, MambaForCausalLM),
        "mamba2": (Mamba2Config, Mamba2ForCausalLM),
    }[model_type]
    torch.manual_seed(seed)
    model = model_class(config_class(**{"vocab_size": 97, **NO_SPECIAL_TOKENS, **config}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def save(model: Any, directory: Path) -> Path:
    model.save_pretrained(directory)
    return directory
