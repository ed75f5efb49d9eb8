"""One function per model task turns a batch into what it costs: ``TASKS[task](model, batch)``.

Every task ends in the same scoring: cross-entropy of the model's logits against ``labels``
(ignoring positions labelled -100), kept per sample so that evaluation can be gathered across
processes and summed exactly. A new task (or a model with another calling convention) adds one
entry to :data:`TASKS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from mambaverse.kernels import cross_entropy

from .data import IGNORE_INDEX


@dataclass
class Outcome:
    """Per-sample sums over the labelled positions of a batch of B samples."""

    loss_sum: Tensor  # (B,) summed cross-entropy
    correct: Tensor  # (B,) positions where the arg-max is the label
    count: Tensor  # (B,) labelled positions

    def mean_loss(self) -> Tensor:
        """The batch's loss: mean cross-entropy over all its labelled positions."""
        return self.loss_sum.sum() / self.count.sum().clamp_min(1)


def score(logits: Tensor, labels: Tensor) -> Outcome:
    """logits (B, ..., V) and labels (B, ...) -> per-sample loss sum, hits and label count."""
    batch, vocab = logits.shape[0], logits.shape[-1]
    logits = logits.reshape(batch, -1, vocab)  # (B, T, V); the loss runs in fp32 whatever this is
    labels = labels.reshape(batch, -1)  # (B, T)
    if logits.shape[1] != labels.shape[1]:
        raise ValueError(
            f"model output has {logits.shape[1]} positions per sample, labels have {labels.shape[1]}"
        )
    labelled = labels != IGNORE_INDEX
    nll = cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), IGNORE_INDEX)
    nll = nll.view(batch, -1)  # (B, T), 0 where ignored
    hits = (logits.argmax(-1) == labels) & labelled
    return Outcome(nll.sum(1), hits.sum(1), labelled.sum(1))


def auxiliary_loss(model: nn.Module) -> Tensor | float:
    """Extra training loss a model reports after its forward: ``aux_loss_coef * aux_loss``
    (the MoE router's load-balancing loss of the hybrid models); 0 for models without one."""
    aux = getattr(model, "aux_loss", None)
    return 0.0 if aux is None else getattr(model, "aux_loss_coef", 1.0) * aux


def classify(model: nn.Module, batch: dict[str, Tensor]) -> Outcome:
    """vision: images (B, C, H, W) -> logits (B, classes); labels (B,)."""
    return score(model(batch["images"]), batch["labels"])


def next_token(model: nn.Module, batch: dict[str, Tensor]) -> Outcome:
    """lm: input_ids (B, L) -> logits (B, L, V); labels (B, L) are the next tokens."""
    return score(model(batch["input_ids"]), batch["labels"])


def caption(model: nn.Module, batch: dict[str, Tensor]) -> Outcome:
    """vlm: images (B, C, H, W) and caption input_ids (B, L) -> logits (B, L, V) over the caption.

    Rows given as text (``prompt`` and ``answer``, lists of strings) are tokenised here by the
    model itself (``model.encode``: its tokenizer and prompt template), so data and model agree;
    such a model also takes ``num_last_tokens``, so that only the span holding labels is scored.
    """
    if "input_ids" in batch:
        return score(model(batch["images"], batch["input_ids"]), batch["labels"])
    encode = getattr(model, "module", model).encode  # a DDP-wrapped model keeps it on .module
    encoded = encode(batch["prompt"], batch["answer"])
    labelled = (encoded["labels"] != IGNORE_INDEX).any(0).nonzero().flatten()  # columns
    first, last = int(labelled.min()), int(labelled.max())
    device = batch["images"].device
    input_ids = encoded["input_ids"][:, : last + 1].to(device)
    labels = encoded["labels"][:, first : last + 1].to(device)
    return score(model(batch["images"], input_ids, num_last_tokens=last + 1 - first), labels)


TASKS: dict[str, Callable[[nn.Module, dict[str, Tensor]], Outcome]] = {
    "vision": classify,
    "lm": next_token,
    "vlm": caption,
}
