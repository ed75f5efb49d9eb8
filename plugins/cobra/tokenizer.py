"""Offline tokenisation for the vision-language models: text <-> token ids, plus two special tokens.

Default: open_clip's bundled byte-pair-encoding tokenizer (CLIP's 49,408-entry vocabulary, whose
merges file ships inside the open_clip package, so nothing is downloaded). Alternatively any
Hugging Face tokenizer saved in a local directory (``tokenizer: /path/to/dir``), read with
``local_files_only=True``.

Special tokens:
- ``<image>`` marks where the image sits: every prompt starts with it, and the model puts the
  projected patch embeddings just before it (image tokens come before the text);
- end-of-text closes every answer; generation stops when it is produced.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from mambaverse.errors import ConfigError

IMAGE_TOKEN = "<image>"
OPEN_CLIP_END_OF_TEXT = "<end_of_text>"
HF_END_OF_TEXT = "<|endoftext|>"  # added to a Hugging Face tokenizer only if it has no eos token


@dataclass(frozen=True)
class Tokenizer:
    """A text tokenizer with the ids of the two special tokens the models need.

    name: ``"open_clip"`` or the directory it was read from (for messages and checkpoints).
    vocab_size: ids in use, special tokens included; the language model needs at least this many.
    """

    name: str
    backend: Any
    vocab_size: int
    image_token_id: int
    eot_token_id: int

    def encode(self, text: str) -> list[int]:
        """Text -> ids, without special tokens around it."""
        if self.name == "open_clip":
            return self.backend.encode(text)
        return self.backend.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        """Ids -> text; special tokens (image, end-of-text) are dropped."""
        special = {self.image_token_id, self.eot_token_id}
        ids = [i for i in ids if i not in special]
        if self.name == "open_clip":
            return self.backend.decode(ids).strip()
        return self.backend.decode(ids, skip_special_tokens=True).strip()


def load_tokenizer(source: str | None = None) -> Tokenizer:
    """``None``: open_clip's bundled BPE tokenizer; a path: a local Hugging Face tokenizer."""
    return _open_clip_tokenizer() if source is None else _hf_tokenizer(str(source))


@cache
def _open_clip_tokenizer() -> Tokenizer:
    from open_clip.tokenizer import SimpleTokenizer

    # The merges file is read from open_clip's own package data.
    backend = SimpleTokenizer(additional_special_tokens=[IMAGE_TOKEN])
    return Tokenizer(
        name="open_clip",
        backend=backend,
        vocab_size=backend.vocab_size,
        image_token_id=backend.encoder[IMAGE_TOKEN],
        eot_token_id=backend.encoder[OPEN_CLIP_END_OF_TEXT],
    )


@cache
def _hf_tokenizer(directory: str) -> Tokenizer:
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"tokenizer: {directory!r} is not a directory; give a local Hugging Face tokenizer "
            "directory (with tokenizer.json or vocab files), or null for open_clip's bundled one"
        )
    from transformers import AutoTokenizer

    try:
        backend = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"tokenizer: cannot read a tokenizer from {str(path)!r} ({err})"
        ) from None
    added: dict[str, Any] = {}
    if IMAGE_TOKEN not in backend.get_vocab():
        added["additional_special_tokens"] = [IMAGE_TOKEN]
    if backend.eos_token_id is None:
        added["eos_token"] = HF_END_OF_TEXT
    if added:
        backend.add_special_tokens(added)
    return Tokenizer(
        name=str(path),
        backend=backend,
        vocab_size=len(backend),
        image_token_id=backend.convert_tokens_to_ids(IMAGE_TOKEN),
        eot_token_id=backend.eos_token_id,
    )
