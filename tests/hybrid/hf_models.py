"""Random transformers Jamba / Bamba / Zamba / Zamba2 causal LMs: the independent reference."""

from __future__ import annotations

from typing import Any

import torch

# No special tokens: a random model must not stop generating early or pad.
NO_SPECIAL_TOKENS = {"eos_token_id": None, "pad_token_id": None, "bos_token_id": None}
VOCAB = 97


def hf_classes(model_type: str) -> tuple[Any, Any]:
    """(config class, causal LM class) of transformers for ``model_type``."""
    import transformers

    name = {"jamba": "Jamba", "bamba": "Bamba", "zamba": "Zamba", "zamba2": "Zamba2"}[model_type]
    return getattr(transformers, f"{name}Config"), getattr(transformers, f"{name}ForCausalLM")


def random_hf_lm(model_type: str, seed: int = 0, **config: Any) -> Any:
    """A float32 transformers causal LM in eval mode, every parameter perturbed by noise, so that
    ones (norm weights, D) and regular values (A_log = log(1..N)) cannot hide a mistake."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    config_class, model_class = hf_classes(model_type)
    torch.manual_seed(seed)
    model = model_class(config_class(**{"vocab_size": VOCAB, **NO_SPECIAL_TOKENS, **config}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()
