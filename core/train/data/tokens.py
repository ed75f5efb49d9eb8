"""Token datasets for language models: token files, and the Mamba paper's synthetic tasks.

Every item is ``{"input_ids": (L,), "labels": (L,)}`` with ``labels[t]`` the token to predict after
reading ``input_ids[: t + 1]`` (or -100 where nothing is asked).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch.utils.data import Dataset

from ...errors import ConfigError
from .base import IGNORE_INDEX, DatasetOptions, Splits


# -- token files --------------------------------------------------------------------------------
class TokenFileOptions(DatasetOptions):
    """A token file: ``.npy`` (1-D integer array), ``.bin`` (raw integers of ``bin_dtype``), or any
    other file read as bytes (vocabulary 256); suffixes in any case, and binary formats that hold
    no token sequence (``.npz``, ``.pt``, ...) refused. The last ``test_fraction`` of it is the test split;
    both splits are cut into non-overlapping windows of ``seq_len`` + 1 tokens."""

    path: str
    seq_len: int = Field(256, ge=1)
    test_fraction: float = Field(0.1, gt=0, lt=1)
    bin_dtype: Literal["uint8", "uint16", "int32", "int64"] = "uint16"
    vocab_size: int | None = Field(None, gt=0, description="null: 256 for bytes, else max id + 1")


# Binary formats that hold no plain token sequence: refused rather than read as bytes.
NOT_TOKEN_FILES = (".npz", ".pt", ".pth", ".safetensors", ".pkl", ".pickle", ".h5", ".parquet")
# Ids past this are taken for a wrong data.bin_dtype unless data.vocab_size says otherwise.
LARGEST_GUESSED_VOCAB = 1 << 24


def read_tokens(options: TokenFileOptions) -> tuple[np.ndarray, int]:
    """The file's tokens and the vocabulary size, checked: some tokens, ids in [0, vocab)."""
    path = Path(options.path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.path: token file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    file_vocab = None  # the vocabulary the format implies (bytes: 256), else the largest id + 1
    if suffix == ".npy":
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
        if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
            raise ConfigError(
                f"{path}: expected a 1-D integer array, got {tokens.ndim}-D {tokens.dtype}"
            )
    elif suffix == ".bin":
        width, size = np.dtype(options.bin_dtype).itemsize, path.stat().st_size
        if size % width:
            raise ConfigError(
                f"{path}: {size} bytes are not a whole number of "
                f"{options.bin_dtype} tokens ({width} bytes each); is data.bin_dtype right?"
            )
        tokens = np.memmap(path, dtype=options.bin_dtype, mode="r")
    elif suffix in NOT_TOKEN_FILES:
        raise ConfigError(
            f"{path}: a {suffix} file is no token file; give a 1-D integer array saved with "
            "numpy.save (.npy), raw integers (.bin, data.bin_dtype), or text (read as bytes)"
        )
    else:
        tokens, file_vocab = np.frombuffer(path.read_bytes(), dtype=np.uint8), 256
    if len(tokens) == 0:
        raise ConfigError(f"{path}: the file holds no tokens")
    low = int(tokens.min()) if tokens.dtype.kind == "i" else 0  # unsigned: no second pass
    high = int(tokens.max())
    if low < 0:
        raise ConfigError(f"{path}: token ids go down to {low}; ids must be >= 0")
    if options.vocab_size is None and high >= LARGEST_GUESSED_VOCAB:
        raise ConfigError(
            f"{path}: token ids go up to {high}: is data.bin_dtype right? (set data.vocab_size "
            "if the vocabulary really is that large)"
        )
    vocab_size = options.vocab_size or file_vocab or high + 1
    if high >= vocab_size:
        raise ConfigError(
            f"{path}: token ids go up to {high}, past data.vocab_size={vocab_size}; set it to "
            f"at least {high + 1}, or leave it out to take the file's"
        )
    return tokens, vocab_size


class TokenWindows(Dataset):
    """Window i = tokens[i·L : i·L + L + 1], as inputs [:-1] and next-token labels [1:]."""

    def __init__(self, tokens: np.ndarray, seq_len: int) -> None:
        self.tokens, self.seq_len = tokens, seq_len

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.seq_len)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = index * self.seq_len
        window = torch.from_numpy(np.array(self.tokens[start : start + self.seq_len + 1], np.int64))
        return {"input_ids": window[:-1], "labels": window[1:]}


def build_token_file(options: TokenFileOptions) -> Splits:
    tokens, vocab_size = read_tokens(options)
    cut = int(len(tokens) * (1 - options.test_fraction))
    train = TokenWindows(tokens[:cut], options.seq_len)
    test = TokenWindows(tokens[cut:], options.seq_len)
    if len(train) == 0 or len(test) == 0:
        raise ConfigError(
            f"data: {options.path} has {len(tokens)} tokens, too few for windows of "
            f"seq_len={options.seq_len} in both splits; lower data.seq_len"
        )
    return Splits(train, test, {"vocab_size": vocab_size})


# -- synthetic tasks (Mamba paper, section 3.1 / 4.1) --------------------------------------------
class SyntheticOptions(DatasetOptions):
    train_samples: int = Field(8192, ge=1)
    test_samples: int = Field(1024, ge=1)
    vocab_size: int = Field(16, ge=4, description="including the task's special tokens")
    data_seed: int = 0


Sampler = Callable[[np.random.Generator, Any], tuple[np.ndarray, np.ndarray]]


class SyntheticTask(Dataset):
    """Samples drawn from a generator seeded by (data_seed, split, index): fixed, and the same on
    every process, so the splits are ordinary finite datasets."""

    def __init__(self, sample: Sampler, options: SyntheticOptions, split: int, size: int) -> None:
        self.sample, self.options, self.split, self.size = sample, options, split, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.options.data_seed, self.split, index])
        input_ids, labels = self.sample(rng, self.options)
        return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}


NOISE, RECALL = 0, 1  # selective copying's special tokens; data tokens are 2 .. vocab_size - 1


class SelectiveCopyingOptions(SyntheticOptions):
    """Selective copying: ``num_tokens`` data tokens scattered among noise in a context of
    ``seq_len``; after it, ``num_tokens`` recall markers, at which the data tokens must be
    produced in order. The paper's setting: seq_len 4096, 16 tokens, vocabulary 16."""

    seq_len: int = Field(4096, ge=1)
    num_tokens: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _tokens_fit_the_context(self) -> SelectiveCopyingOptions:
        if self.num_tokens > self.seq_len:
            raise ValueError(
                f"num_tokens {self.num_tokens} data tokens cannot be scattered in seq_len "
                f"{self.seq_len} positions; make seq_len at least num_tokens"
            )
        return self


def selective_copying_batch(
    rng: np.random.Generator, size: int, options: SelectiveCopyingOptions
) -> tuple[np.ndarray, np.ndarray]:
    """``size`` sequences at once: input_ids and labels, both (size, seq_len + num_tokens)."""
    context, k = options.seq_len, options.num_tokens
    rows = np.arange(size)[:, None]
    data = rng.integers(RECALL + 1, options.vocab_size, size=(size, k), dtype=np.int64)
    # k distinct positions per row, in order: the k smallest of random keys, sorted.
    positions = np.sort(np.argsort(rng.random((size, context)), axis=1)[:, :k], axis=1)
    input_ids = np.full((size, context + k), NOISE, dtype=np.int64)
    input_ids[rows, positions] = data
    input_ids[:, context:] = RECALL
    labels = np.full((size, context + k), IGNORE_INDEX, dtype=np.int64)
    labels[:, context:] = data  # at the i-th recall marker, answer the i-th data token
    return input_ids, labels


def selective_copying_sample(
    rng: np.random.Generator, options: SelectiveCopyingOptions
) -> tuple[np.ndarray, np.ndarray]:
    input_ids, labels = selective_copying_batch(rng, 1, options)
    return input_ids[0], labels[0]


class InductionHeadsOptions(SyntheticOptions):
    """Induction heads (Gu & Dao 2023, section 4.1.2, after Dao, Fu et al. 2023 / H3): random
    tokens, among them the trigger token once, at a uniformly random place, followed by a value;
    the sequence ends with the trigger again, where that value must be recalled. Nothing else
    is asked. The paper trains at seq_len 256 with vocabulary 16 and tests up to 2^20."""

    seq_len: int = Field(256, ge=4)


TRIGGER = 0  # induction heads' special token; the others are 1 .. vocab_size - 1


def induction_heads_batch(
    rng: np.random.Generator, size: int, options: InductionHeadsOptions
) -> tuple[np.ndarray, np.ndarray]:
    """``size`` sequences at once: input_ids and labels, both (size, seq_len); labels are
    IGNORE_INDEX except the last, the value that followed the first trigger."""
    length, rows = options.seq_len, np.arange(size)
    input_ids = rng.integers(TRIGGER + 1, options.vocab_size, size=(size, length), dtype=np.int64)
    # trigger at `where` in 0 .. L-3, its value at `where + 1` (before the final trigger)
    where = rng.integers(0, length - 2, size=size)
    input_ids[rows, where] = TRIGGER
    input_ids[:, -1] = TRIGGER
    labels = np.full((size, length), IGNORE_INDEX, dtype=np.int64)
    labels[:, -1] = input_ids[rows, where + 1]
    return input_ids, labels


def induction_heads_sample(
    rng: np.random.Generator, options: InductionHeadsOptions
) -> tuple[np.ndarray, np.ndarray]:
    input_ids, labels = induction_heads_batch(rng, 1, options)
    return input_ids[0], labels[0]


def synthetic_builder(sample: Sampler) -> Callable[[SyntheticOptions], Splits]:
    def build(options: SyntheticOptions) -> Splits:
        return Splits(
            train=SyntheticTask(sample, options, 0, options.train_samples),
            test=SyntheticTask(sample, options, 1, options.test_samples),
            model_defaults={"vocab_size": options.vocab_size},
        )

    return build
