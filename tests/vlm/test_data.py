"""The vlm datasets: digits as captions and answers, JSON lines with clear errors for bad rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mambaverse.errors import ConfigError
from mambaverse.plugins.cobra.data import (
    DIGIT_WORDS,
    DigitTextOptions,
    JsonLinesOptions,
    build_digit_text,
    build_json_lines,
    write_digit_images,
)
from mambaverse.plugins.cobra.images import load_image, to_pixels
from mambaverse.plugins.cobra.templates import CAPTION_PROMPT


def test_digits_give_a_caption_and_an_answer_per_image():
    from sklearn.datasets import load_digits

    splits = build_digit_text(DigitTextOptions(name="vlm_digits", img_size=16))
    train, test = splits.train, splits.test
    assert (
        len(train) + len(test) == 2 * 1797 and len(test) == 2 * 360
    )  # 20 % of the images held out
    digits = load_digits()
    for i in range(0, len(train), 97):
        item = train[i]
        assert item["images"].shape == (3, 16, 16)
        assert item["images"].min() >= 0.0 and item["images"].max() <= 1.0
        if item["prompt"] == CAPTION_PROMPT:
            word = item["answer"].removeprefix("a handwritten digit ")
        else:
            assert item["prompt"] == "What digit is this?"
            word = item["answer"]
        # The image is the digit the text names: find it among the originals by its pixels.
        label = DIGIT_WORDS.index(word)
        small = torch.nn.functional.interpolate(item["images"][:1][None], size=8, mode="area")[0, 0]
        distances = ((torch.tensor(digits.images / 16.0) - small) ** 2).flatten(1).sum(1)
        assert digits.target[int(distances.argmin())] == label


def test_digit_files_give_the_same_pixels_as_the_dataset(tmp_path):
    splits = build_digit_text(DigitTextOptions(name="vlm_digits", style="caption", img_size=24))
    written = write_digit_images(tmp_path, "test")
    assert len(written) == len(splits.test) == 360
    for k in (0, 123, 359):
        path, label = written[k]
        from_file = to_pixels(load_image(path), 24)
        item = splits.test[k]
        torch.testing.assert_close(from_file, item["images"])
        assert item["answer"] == f"a handwritten digit {DIGIT_WORDS[label]}"


@pytest.fixture
def rows_file(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    lines = [
        {"image": "a.png", "caption": "a red square"},
        {"image": "b.png", "prompt": "What is it?", "answer": "noise"},
        {"image": "gone.png", "caption": "missing"},
        {"image": "broken.png", "caption": "unreadable"},
        {"image": "a.png", "caption": "again"},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_json_lines_name_the_file_and_line_of_a_missing_image(rows_file):
    with pytest.raises(
        ConfigError, match=rf"{rows_file}:3: image .*gone.png' does not exist.*skip_bad_rows"
    ):
        build_json_lines(JsonLinesOptions(name="vlm_jsonl", path=str(rows_file)))
    rows_file.write_text("\n".join(rows_file.read_text().splitlines()[3:]))
    with pytest.raises(ConfigError, match=rf"{rows_file}:1: image .*broken.png' cannot be read"):
        build_json_lines(JsonLinesOptions(name="vlm_jsonl", path=str(rows_file)))


def test_json_lines_can_skip_bad_rows(rows_file):
    options = JsonLinesOptions(
        name="vlm_jsonl",
        path=str(rows_file),
        test_path=str(rows_file),
        skip_bad_rows=True,
        img_size=8,
    )
    with pytest.warns(UserWarning, match=r"left out 2 row\(s\) .*lines 3, 4"):
        splits = build_json_lines(options)
    items = [splits.train[i] for i in range(len(splits.train))]
    assert [(i["prompt"], i["answer"]) for i in items] == [
        (CAPTION_PROMPT, "a red square"),
        ("What is it?", "noise"),
        (CAPTION_PROMPT, "again"),
    ]
    expected = torch.tensor(
        np.asarray(Image.open(rows_file.parent / "a.png").resize((8, 8), Image.Resampling.BILINEAR))
        / 255.0
    )
    torch.testing.assert_close(items[0]["images"], expected.permute(2, 0, 1).float())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"caption": "no image"}', "expected"),
        ('{"image": "a.png", "prompt": "only a prompt"}', "a caption, or a prompt and an answer"),
        ('{"image": "a.png", "caption": 7}', "must be strings"),
    ],
)
def test_malformed_rows_are_explained(tmp_path, line, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match=rf"{path}:1: .*{message}"):
        build_json_lines(JsonLinesOptions(name="vlm_jsonl", path=str(path)))


def test_a_missing_json_lines_file_is_explained(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_json_lines(JsonLinesOptions(name="vlm_jsonl", path=str(tmp_path / "none.jsonl")))
