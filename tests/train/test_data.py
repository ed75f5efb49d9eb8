"""Datasets: fixed splits, labels aligned with what the model must predict, and the readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from mambaverse.errors import ConfigError
from mambaverse.train.config import DataSection
from mambaverse.train.data import IGNORE_INDEX, build_dataset
from mambaverse.train.data.images import END_OF_TEXT, encode_caption
from mambaverse.train.data.tokens import NOISE, RECALL, TRIGGER


def build(task: str, **options):
    return build_dataset(DataSection(**options), task, "test")


def stack(dataset, key):
    return torch.stack([dataset[i][key] for i in range(len(dataset))])


def test_digits_split_is_fixed_stratified_and_normalised_on_train():
    splits = build("vision", name="digits", img_size=8)
    assert (len(splits.train), len(splits.test)) == (1437, 360)
    assert torch.equal(
        stack(splits.test, "images"),
        stack(build("vision", name="digits", img_size=8).test, "images"),
    )
    counts = torch.bincount(stack(splits.test, "labels"), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of each class's ~180
    train, test = stack(splits.train, "images"), stack(splits.test, "images")
    assert train.mean().abs() < 1e-5 and (train.std() - 1).abs() < 1e-4
    # Undo the one affine map (pixels 0 and 16 both occur): every image, with its label, is one
    # of scikit-learn's digits, and each digit is in exactly one split.
    everything = torch.cat([train, test]).flatten(1)
    low, high = everything.min(), everything.max()
    recovered = ((everything - low) / (high - low) * 16).round().to(torch.int64)
    labels = torch.cat([stack(splits.train, "labels"), stack(splits.test, "labels")])
    digits = load_digits()
    expected = sorted(
        zip(map(tuple, digits.images.reshape(-1, 64).astype(int).tolist()), digits.target.tolist())
    )
    assert sorted(zip(map(tuple, recovered.tolist()), labels.tolist())) == expected
    assert splits.model_defaults == {"num_classes": 10, "img_size": 8, "in_chans": 1}


def test_digits_resize_and_channels():
    splits = build("vision", name="digits", img_size=20, channels=3)
    image = splits.train[0]["images"]
    assert image.shape == (3, 20, 20) and torch.equal(image[0], image[2])


def write_tokens(path, tokens):
    np.save(path, np.asarray(tokens, dtype=np.int32))
    return path


@pytest.mark.parametrize("kind", ["npy", "bin", "text"])
def test_token_windows_hold_next_token_labels(tmp_path, kind):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, size=1000)
    if kind == "npy":
        path = write_tokens(tmp_path / "t.npy", tokens)
    elif kind == "bin":
        path = tmp_path / "t.bin"
        tokens.astype(np.uint16).tofile(path)
    else:
        path = tmp_path / "t.txt"
        path.write_bytes(bytes(tokens.astype(np.uint8)))
    splits = build("lm", name="tokens", path=str(path), seq_len=32, test_fraction=0.2)
    assert (len(splits.train), len(splits.test)) == ((800 - 1) // 32, (200 - 1) // 32)
    item = splits.train[3]
    assert torch.equal(item["input_ids"], torch.tensor(tokens[96:128]))
    assert torch.equal(item["labels"], torch.tensor(tokens[97:129]))
    assert torch.equal(splits.test[0]["input_ids"], torch.tensor(tokens[800:832]))
    assert splits.model_defaults == {"vocab_size": 256 if kind == "text" else int(tokens.max()) + 1}


def test_token_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build("lm", name="tokens", path=str(tmp_path / "none.npy"))
    np.save(tmp_path / "f.npy", np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ConfigError, match="expected a 1-D integer array, got 2-D float32"):
        build("lm", name="tokens", path=str(tmp_path / "f.npy"))
    write_tokens(tmp_path / "short.npy", range(20))
    with pytest.raises(ConfigError, match="too few for windows of seq_len=64"):
        build("lm", name="tokens", path=str(tmp_path / "short.npy"), seq_len=64)


@pytest.mark.parametrize(
    ("name", "content", "options", "message"),
    [
        (
            "ids.npy",
            np.arange(50),
            {"vocab_size": 20},
            r"ids go up to 49, past data.vocab_size=20; set it to at least 50",
        ),
        ("neg.npy", np.arange(-3, 40), {}, r"ids go down to -3; ids must be >= 0"),
        ("empty.npy", np.zeros(0, dtype=np.int32), {}, r"holds no tokens"),
        ("odd.bin", b"\x01\x02\x03", {}, r"3 bytes are not a whole number of uint16 tokens"),
        (
            "wide.bin",
            np.full(40, 2**40, dtype=np.int64).tobytes(),
            {"bin_dtype": "int64"},
            r"ids go up to 1099511627776: is data.bin_dtype right\?",
        ),
        ("t.npz", b"PK", {}, r"a \.npz file is no token file"),
        (
            "text.txt",
            "héllo wörld".encode() * 20,
            {"vocab_size": 128},
            r"ids go up to 195, past data.vocab_size=128",
        ),
    ],
)
def test_token_files_are_checked_before_training(tmp_path, name, content, options, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    with pytest.raises(ConfigError, match=message):
        build("lm", name="tokens", path=str(path), seq_len=4, **options)


def test_token_file_suffixes_are_read_in_any_case(tmp_path):
    write_tokens(tmp_path / "ids.npy", np.arange(100) % 37)
    (tmp_path / "ids.npy").rename(tmp_path / "IDS.NPY")
    splits = build("lm", name="tokens", path=str(tmp_path / "IDS.NPY"), seq_len=8)
    assert splits.model_defaults == {"vocab_size": 37}


def test_selective_copying_asks_for_the_data_tokens_in_order():
    splits = build("lm", name="selective_copying", seq_len=40, num_tokens=5, vocab_size=10,
                   train_samples=20, test_samples=4)  # fmt: skip
    for i in range(len(splits.train)):
        item = splits.train[i]
        context, tail = item["input_ids"][:40], item["input_ids"][40:]
        data = context[context != NOISE]
        assert len(data) == 5 and (data > RECALL).all() and (tail == RECALL).all()
        assert torch.equal(item["labels"][40:], data)
        assert (item["labels"][:40] == IGNORE_INDEX).all()
    with pytest.raises(ConfigError) as err:
        build("lm", name="selective_copying", seq_len=8, num_tokens=16)
    assert str(err.value).endswith(
        "data: num_tokens 16 data tokens cannot be scattered in seq_len 8 positions; make "
        "seq_len at least num_tokens"
    )


def test_synthetic_samples_are_fixed_by_data_seed_and_split():
    def first(**options):
        return build("lm", name="induction_heads", seq_len=64, **options)

    a, b, c = first(), first(), first(data_seed=1)
    assert torch.equal(a.train[5]["input_ids"], b.train[5]["input_ids"])
    assert not torch.equal(a.train[5]["input_ids"], a.test[5]["input_ids"])
    assert not torch.equal(a.train[5]["input_ids"], c.train[5]["input_ids"])


def test_induction_heads_asks_for_the_token_after_the_trigger():
    splits = build("lm", name="induction_heads", seq_len=30, vocab_size=8, train_samples=50)
    for i in range(len(splits.train)):
        ids, labels = splits.train[i]["input_ids"], splits.train[i]["labels"]
        triggers = (ids == TRIGGER).nonzero().flatten()
        assert len(triggers) == 2 and triggers[1] == 29
        assert labels[-1] == ids[triggers[0] + 1] and (labels[:-1] == IGNORE_INDEX).all()


def write_image(path, value: int, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size + 4, 3), value, dtype=np.uint8)).save(path)


def test_image_folder_layouts(tmp_path):
    for split in ("train", "val"):
        for label, cls in enumerate(["cat", "dog"]):
            for i in range(3):
                write_image(tmp_path / "a" / split / cls / f"{i}.png", 40 + 100 * label)
    splits = build("vision", name="imagefolder", path=str(tmp_path / "a"), img_size=8, channels=1,
                   mean=[0.0], std=[1.0])  # fmt: skip
    assert (len(splits.train), len(splits.test)) == (6, 6)
    item = splits.test[4]
    assert item["images"].shape == (1, 8, 8) and item["labels"] == 1
    assert torch.allclose(item["images"], torch.full((1, 8, 8), 140 / 255), atol=1e-6)
    assert splits.model_defaults == {"num_classes": 2, "img_size": 8, "in_chans": 1}

    for label, cls in enumerate(["a", "b", "c"]):
        for i in range(10):
            write_image(tmp_path / "flat" / cls / f"{i}.png", 10 * label)
    splits = build(
        "vision", name="imagefolder", path=str(tmp_path / "flat"), img_size=8, test_fraction=0.3
    )
    test_labels = sorted(int(splits.test[i]["labels"]) for i in range(len(splits.test)))
    assert test_labels == [0, 0, 0, 1, 1, 1, 2, 2, 2] and len(splits.train) == 21
    with pytest.raises(ConfigError, match=r"image folder .* does not exist"):
        build("vision", name="imagefolder", path=str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "cat").mkdir(parents=True)  # a class folder without images
    with pytest.raises(ConfigError, match=r"Found no valid file for the classes cat.*<class>/"):
        build("vision", name="imagefolder", path=str(tmp_path / "empty"))


def test_caption_tokens_are_bytes_then_end_of_text():
    input_ids, labels = encode_caption("héllo", max_length=10)
    encoded = list("héllo".encode())  # 6 bytes
    assert input_ids.tolist() == [END_OF_TEXT, *encoded, END_OF_TEXT, END_OF_TEXT, END_OF_TEXT]
    assert labels.tolist() == [*encoded, END_OF_TEXT, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    input_ids, labels = encode_caption("abcdef", max_length=4)  # cut to fit the end marker
    assert labels.tolist() == [97, 98, 99, END_OF_TEXT] and input_ids.tolist() == [
        END_OF_TEXT,
        97,
        98,
        99,
    ]


def test_caption_lines_pair_images_and_text(tmp_path):
    lines = []
    for i in range(10):
        write_image(tmp_path / "img" / f"{i}.png", 20 * i)
        lines.append(json.dumps({"image": f"img/{i}.png", "caption": f"grey {i}"}))
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    splits = build("vlm", name="captions", path=str(tmp_path / "captions.jsonl"), img_size=8,
                   max_length=12, test_fraction=0.2)  # fmt: skip
    assert (len(splits.train), len(splits.test)) == (8, 2)
    item = splits.test[0]
    caption = bytes(t for t in item["labels"].tolist() if 0 <= t < END_OF_TEXT).decode()
    shade = int(caption.split()[1]) * 20
    assert item["images"].shape == (3, 8, 8)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(item["images"][:, 0, 0], (shade / 255 - mean) / std, atol=1e-5)
    (tmp_path / "bad.jsonl").write_text('{"image": "img/0.png"}\n')
    with pytest.raises(
        ConfigError, match=r"bad.jsonl:1: expected \{\"image\": ..., \"caption\": ...\}"
    ):
        build("vlm", name="captions", path=str(tmp_path / "bad.jsonl"))
    (tmp_path / "one.jsonl").write_text(lines[0] + "\n")
    with pytest.raises(ConfigError, match=r"1 sample\(s\) cannot be split into train and test"):
        build("vlm", name="captions", path=str(tmp_path / "one.jsonl"), test_fraction=0.2)


def _png(path, size=8, mode="RGB", value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    if mode == "I;16":
        array = (
            np.full((size, size), value, np.uint16)
            if value is not None
            else (rng.integers(0, 65536, (size, size), dtype=np.uint16))
        )
        Image.fromarray(array).save(path)  # PIL writes I;16 PNGs from uint16 arrays
    else:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def test_image_folders_skip_hidden_folders_and_need_two_classes(tmp_path):
    for name in ("cat", "dog", ".ipynb_checkpoints"):
        for i in range(4):
            _png(tmp_path / "a" / name / f"{i}.png")
    splits = build("vision", name="imagefolder", path=str(tmp_path / "a"), img_size=8,
                   test_fraction=0.5)  # fmt: skip
    assert splits.model_defaults["num_classes"] == 2
    for i in range(4):  # a root holding train/ alone: its classes, a share held out
        _png(tmp_path / "b" / "train" / ("cat" if i % 2 else "dog") / f"{i}.png")
    splits = build("vision", name="imagefolder", path=str(tmp_path / "b"), img_size=8,
                   test_fraction=0.5)  # fmt: skip
    assert splits.model_defaults["num_classes"] == 2
    for name in ("bus", "train"):  # a class named train (as in CIFAR-100) is a class
        for i in range(2):
            _png(tmp_path / "d" / name / f"{i}.png")
    splits = build("vision", name="imagefolder", path=str(tmp_path / "d"), img_size=8,
                   test_fraction=0.5)  # fmt: skip
    assert splits.model_defaults["num_classes"] == 2
    import pickle  # DataLoader workers started with spawn get the dataset pickled

    assert len(pickle.loads(pickle.dumps(splits.train))) == len(splits.train)
    _png(tmp_path / "c" / "cat" / "0.png")
    with pytest.raises(ConfigError, match=r"has 1 class folder\(s\) \(cat\); a classifier needs"):
        build("vision", name="imagefolder", path=str(tmp_path / "c"), img_size=8)


def test_unreadable_and_sixteen_bit_images(tmp_path):
    from mambaverse.train.data.images import open_rgb

    grey = open_rgb(_png(tmp_path / "g.png", mode="I;16", value=32896))  # 32896 = 128 · 257
    assert Image.open(tmp_path / "g.png").mode.startswith("I")
    assert np.asarray(grey).tolist() == np.full((8, 8, 3), 128).tolist()  # not clipped white
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"image '.*bad.png' cannot be read .*remove or replace"):
        open_rgb(tmp_path / "bad.png")
    for name in ("cat", "dog"):
        for i in range(3):
            _png(tmp_path / "set" / name / f"{i}.png")
    (tmp_path / "set" / "cat" / "2.png").write_bytes(b"not a png")
    splits = build("vision", name="imagefolder", path=str(tmp_path / "set"), img_size=8,
                   test_fraction=0.5)  # fmt: skip
    with pytest.raises(ConfigError, match=r"cat/2.png' cannot be read"):
        [splits.train[i] for i in range(len(splits.train))] + [
            splits.test[i] for i in range(len(splits.test))
        ]
