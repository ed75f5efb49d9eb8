"""Cobra-style vision-language model: vision towers -> projector -> a mambaverse language model.

Zhao et al., "Cobra: Extending Mamba to Multi-Modal Large Language Model for Efficient Inference"
(2024), official code h-zhao1997/cobra (cobra/models/vlms/cobra.py)::

    f      = concat_c(tower_1(image), ..., tower_k(image))        (B, N, C_1 + ... + C_k)
    e_img  = projector(f)                                          (B, N, d_model)
    e_txt  = embedding([<image>] + template(prompt) + answer)      (B, L, d_model)
    logits = LM([e_img ; e_txt])[N:]                               (B, L, vocab) — text positions

The image tokens come before the text; the loss is taken on the answer tokens only. Generation
prefills [e_img ; e_txt(prompt)] in one parallel pass and then decodes with the language model's
recurrent state, whose size does not grow with the prompt for SSM layers.

Stages (Cobra's ``freeze_backbones``): ``align`` trains the projector only; ``finetune`` trains
the projector and the language model. The towers stay frozen (and in eval mode) unless
``train_towers`` is set.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from mambaverse.api import create_model, list_models, model_config
from mambaverse.bounds import Positive
from mambaverse.errors import ConfigError, InputError, unknown_name
from mambaverse.plugins.mamba_lm.generation import token_ids
from mambaverse.plugins.mixers.base import kernel_scope

from .images import as_pixels
from .projector import build_projector
from .templates import CAPTION_PROMPT, get_template
from .tokenizer import load_tokenizer
from .towers import build_towers, load_weights

IGNORE_INDEX = -100
STAGES = ("align", "finetune")

# Cobra-3B's vision backbone "dinosiglip-vit-so-384px": DINOv2 ViT-L/14 with registers and SigLIP
# So400m/14, both at 384 px (27 × 27 = 729 patches each; 1024 + 1152 = 2176 channels).
COBRA_TOWERS = ("timm:vit_large_patch14_reg4_dinov2", "timm:vit_so400m_patch14_siglip_384")


class CobraVLM(nn.Module):
    """A vision-language model assembled by name.

    towers: vision towers (see :mod:`.towers`): names, or ``{name, weights, layer, config}``.
    img_size: the side every tower is built for. projector: ``linear``, ``gelu-mlp`` or
    ``fused-gelu-mlp``. language_model: a language-model preset (``mamba_2.8b``, ``mamba_micro``,
    a hybrid preset, ...); language_model_config: overrides of its config (its vocabulary is
    raised to the tokenizer's if smaller). tokenizer: None = open_clip's bundled BPE, or a local
    Hugging Face tokenizer directory. template: ``plain`` or ``chat``. max_length: limit on image
    plus text tokens. stage: ``align`` or ``finetune``. train_towers: also train the towers.
    projector_from: a checkpoint (directory or safetensors file) of a VLM whose ``projector.*``
    weights initialise this projector, e.g. the align stage's export for the finetune stage.
    kernels: op -> impl around the forward.
    """

    def __init__(
        self,
        towers: Sequence[str | Mapping[str, Any]] | str = COBRA_TOWERS,
        img_size: Positive = 384,
        projector: str = "fused-gelu-mlp",
        language_model: str = "mamba_2.8b",
        language_model_config: Mapping[str, Any] | None = None,
        tokenizer: str | None = None,
        template: str = "chat",
        max_length: Positive = 2048,
        stage: Literal["align", "finetune"] = "finetune",
        train_towers: bool = False,
        projector_from: str | None = None,
        kernels: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise unknown_name("training stage", stage, STAGES)
        self.tokenizer = load_tokenizer(tokenizer)
        self.template = get_template(template)
        self.img_size, self.max_length = img_size, max_length
        self.stage, self.train_towers = stage, train_towers
        self.kernels = dict(kernels) if kernels else None

        self.towers = build_towers(towers, img_size)
        self.language_model = _build_language_model(
            language_model, dict(language_model_config or {}), self.tokenizer.vocab_size
        )
        self.projector = build_projector(
            projector, self.towers.num_features, self.language_model.d_model
        )
        if projector_from is not None:  # Cobra's finetune stage starts from the align projector
            load_weights(self.projector, projector_from, strip_prefix="projector.")

        self.towers.requires_grad_(train_towers)
        self.language_model.requires_grad_(stage == "finetune")
        self.projector.requires_grad_(True)
        self.train()

    def train(self, mode: bool = True) -> CobraVLM:
        super().train(mode)
        if not self.train_towers:
            self.towers.eval()  # frozen towers: no dropout, no drop-path, fixed norms
        return self

    # -- the network ---------------------------------------------------------------------------
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> image tokens (B, N, d_model)."""
        dtype = next(self.projector.parameters()).dtype
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_towers):
            features = self.towers(images.to(dtype))  # (B, N, C)
        return self.projector(features)

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, num_last_tokens: int = 0
    ) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1], input_ids (B, L) -> logits (B, L, padded vocab) of the
        text positions (position t predicts token t + 1); only the last ``num_last_tokens`` of
        them if > 0 (training needs the answers' logits only: the LM head is the costly part)."""
        with kernel_scope(self.kernels):
            image_tokens = self.embed_images(images)
            self._check_length(
                image_tokens.shape[1],
                input_ids.shape[1],
                "the sequence",
                "use smaller images (fewer image tokens) or shorter texts",
            )
            return self.language_model(
                input_ids,
                prefix_embeds=image_tokens,
                num_last_tokens=num_last_tokens or input_ids.shape[1],
            )

    # -- text ------------------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str], answers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Training pairs -> ``input_ids`` and ``labels`` (B, L), right-padded with end-of-text.

        sequence  = [<image>] + template(prompt) + answer + [eot]
        input_ids = sequence[:-1]
        labels[t] = sequence[t + 1] where that token is part of answer + [eot], else -100.
        """
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        rows = []
        for prompt, answer in zip(prompts, answers):
            prompt_ids = self.template.prompt_ids(self.tokenizer, prompt)
            sequence = prompt_ids + self.template.answer_ids(self.tokenizer, answer)
            labels = [IGNORE_INDEX] * (len(prompt_ids) - 1) + sequence[len(prompt_ids) :]
            rows.append((sequence[:-1], labels))
        length = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), length), self.tokenizer.eot_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, target) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(target)] = torch.tensor(target)
        return {"input_ids": input_ids, "labels": labels}

    def checkpoint_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The config a checkpoint records (``save_pretrained``): without ``projector_from``,
        whose weights the checkpoint holds, and with a tokenizer directory as an absolute path,
        so that loading works from any working directory."""
        if config.get("tokenizer") is not None:
            config["tokenizer"] = str(Path(config["tokenizer"]).expanduser().resolve())
        return {**config, "projector_from": None}

    @torch.inference_mode()
    def generate(
        self,
        images: Any,
        prompts: str | Sequence[str] | None = None,
        max_new_tokens: int = 32,
        cuda_graph: bool | None = None,
        **sampling: Any,
    ) -> list[str]:
        """Answer ``prompts`` (default: "Describe the image.") about ``images``; one string each.

        images: a tensor (B, 3, H, W) in [0, 1], or PIL images, or image paths.
        sampling: the language model's ``generate`` options (temperature, top_k, top_p,
        do_sample, generator, eos_token_id: stop tokens besides the end of text); greedy by
        default. Decoding uses the language model's recurrent
        state: constant memory per new token for SSM layers.
        cuda_graph: after the prefill of image tokens + prompt, decode each token by replaying
        one captured CUDA graph of the language model's step (mamba_lm's ``generate``): None =
        on CUDA when it can be captured and matches eager steps (SSM states; attention layers
        whose attention kernel is SDPA), eager on the CPU; True = always (an error says why it
        cannot); False = eager.
        """
        device = next(self.projector.parameters()).device
        # Stop tokens of the caller's, besides the end of text that always ends an answer.
        extra_eos = token_ids(sampling.pop("eos_token_id", None))
        pixels = as_pixels(images, self.img_size).to(device)
        batch = pixels.shape[0]
        if prompts is None or isinstance(prompts, str):
            prompts = [CAPTION_PROMPT if prompts is None else prompts] * batch
        if len(prompts) != batch:
            raise ValueError(f"generate: {batch} images but {len(prompts)} prompts")

        with kernel_scope(self.kernels):
            image_tokens = self.embed_images(pixels)  # (B, N, d_model)
            encoded = [self.template.prompt_ids(self.tokenizer, p) for p in prompts]
            # Without an attention mask, padding would enter an SSM's state: decode prompts of
            # equal length together instead.
            by_length: dict[int, list[int]] = defaultdict(list)
            for row, ids in enumerate(encoded):
                by_length[len(ids)].append(row)
            answers = [""] * batch
            for length, rows in by_length.items():
                self._check_length(
                    image_tokens.shape[1],
                    length + max_new_tokens,
                    "the prompt plus max_new_tokens",
                    "shorten the prompt or max_new_tokens",
                )
                input_ids = torch.tensor([encoded[r] for r in rows], device=device)
                out = self.language_model.generate(
                    input_ids,
                    max_new_tokens,
                    eos_token_id=[self.tokenizer.eot_token_id, *extra_eos],
                    prefix_embeds=image_tokens[rows],
                    cuda_graph=cuda_graph,
                    **sampling,
                )
                for row, new_ids in zip(rows, out[:, length:].tolist()):
                    answers[row] = self.decode(new_ids)
            return answers

    def decode(self, ids: Sequence[int]) -> str:
        """Generated ids -> text, up to the first end-of-text."""
        ids = list(ids)
        if self.tokenizer.eot_token_id in ids:
            ids = ids[: ids.index(self.tokenizer.eot_token_id)]
        return self.tokenizer.decode(ids)

    def overlong_rows(self, texts: Sequence[tuple[str, str, str]]) -> list[str]:
        """Of training rows ``(where, prompt, answer)``, those whose sequence (image tokens, then
        the encoded prompt and answer) exceeds ``max_length``, each as "where: its token count"."""
        with torch.inference_mode():
            probe = torch.zeros(1, 3, self.img_size, self.img_size)
            image_tokens = self.embed_images(probe.to(next(self.parameters()).device)).shape[1]
        found = []
        for where, prompt, answer in texts:
            text = len(self.encode([prompt], [answer])["input_ids"][0])
            if image_tokens + text > self.max_length:
                found.append(f"{where}: {image_tokens} image + {text} text tokens")
        return found

    def _check_length(self, image_tokens: int, text_tokens: int, what: str, fix: str) -> None:
        if image_tokens + text_tokens > self.max_length:
            raise InputError(
                f"{what} is too long: {image_tokens} image tokens + {text_tokens} text tokens = "
                f"{image_tokens + text_tokens} > the model's max_length {self.max_length}; "
                f"{fix}, or raise max_length"
            )


def _build_language_model(name: str, config: dict[str, Any], min_vocab: int) -> nn.Module:
    language_models = list_models(task="lm")
    if name not in language_models:
        raise unknown_name("language model", name, language_models)
    if config.get("vocab_size", min_vocab) < min_vocab:
        raise ConfigError(
            f"language_model_config.vocab_size {config['vocab_size']} is smaller than the "
            f"tokenizer's {min_vocab} ids; leave it out to use the tokenizer's"
        )
    if model_config(name, **config).get("vocab_size", min_vocab) < min_vocab:
        config["vocab_size"] = min_vocab  # the tokenizer's ids (special tokens included)
    return create_model(name, **config)
