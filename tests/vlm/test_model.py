"""The Cobra model: image tokens before the text, loss on answers, cached generation, stages,
constant decoding memory, the published shape on the meta device, checkpoints and `caption`."""

from __future__ import annotations

import json

import pytest
import torch

import mambaverse
from mambaverse.cli import main
from mambaverse.errors import ConfigError, InputError, UnknownNameError
from mambaverse.plugins.cobra.templates import get_template
from mambaverse.plugins.mamba_lm.generation import state_nbytes

IGNORE = -100


def tiny(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = mambaverse.create_model("cobra_tiny", **overrides)
    with torch.no_grad():  # away from the init, so that every part matters to the output
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return tiny()


def test_encode_puts_the_loss_on_the_answer_only(model):
    tok, template = model.tokenizer, get_template("plain")
    batch = model.encode(["What digit is this?", "Describe the image."], ["seven", "a digit"])
    for row, (prompt, answer) in enumerate(
        [("What digit is this?", "seven"), ("Describe the image.", "a digit")]
    ):
        prompt_ids = [tok.image_token_id, *tok.encode(f"In: {prompt}\nOut: ")]
        answer_ids = [*tok.encode(answer), tok.eot_token_id]
        sequence = prompt_ids + answer_ids
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        assert ids[: len(sequence) - 1].tolist() == sequence[:-1]
        labelled = (labels != IGNORE).nonzero().flatten().tolist()
        # position t predicts token t + 1: the answer's tokens are predicted from the last
        # prompt token onwards, and nothing else is
        assert labelled == list(range(len(prompt_ids) - 1, len(sequence) - 1))
        assert labels[labelled].tolist() == answer_ids
    assert template.name == "plain"


def test_image_tokens_come_before_the_text(model):
    images, ids = torch.rand(2, 3, 16, 16), model.encode(["a", "b"], ["c", "d"])["input_ids"]
    with torch.no_grad():
        logits = model(images, ids)
        lm = model.language_model
        image_tokens = model.projector(model.towers(images))  # (B, N, d)
        sequence = torch.cat([image_tokens, lm.embedding(ids)], dim=1)
        hidden, residual = sequence, None
        for block in lm.layers:
            hidden, residual = block(hidden, residual)
        expected = lm.lm_head(lm.norm_f(hidden + residual))[:, image_tokens.shape[1] :]
    assert logits.shape == (2, ids.shape[1], lm.padded_vocab_size)
    torch.testing.assert_close(logits, expected)
    other = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(model(other, ids), logits)  # the text sees the image


@pytest.mark.parametrize("language_model", ["mamba_micro", "mamba2_micro", "jamba_micro"])
def test_generate_with_the_cache_equals_greedy_decoding_without_it(language_model):
    model = tiny(language_model=language_model)
    images = torch.rand(3, 3, 16, 16)
    prompts = ["What digit is this?", "What digit is this?", "Describe the image, please."]
    answers = model.generate(images, prompts, max_new_tokens=6)
    tok = model.tokenizer
    for row, prompt in enumerate(prompts):
        ids = get_template("plain").prompt_ids(tok, prompt)
        new = []
        with torch.no_grad():
            for _ in range(6):  # the whole sequence again for every token: no state at all
                logits = model(images[row : row + 1], torch.tensor([ids + new]))
                token = int(logits[0, -1, : tok.vocab_size].argmax())
                new.append(token)
                if token == tok.eot_token_id:
                    break
        assert answers[row] == model.decode(new)


def test_decoding_memory_stays_flat_as_the_prompt_grows():
    def state_bytes(model, prompt_words: int) -> int:
        states = []
        allocate = model.language_model.allocate_state
        model.language_model.allocate_state = lambda *a, **k: (
            states.append(allocate(*a, **k)) or states[-1]
        )
        model.generate(
            torch.rand(1, 3, 16, 16), " ".join(["digit"] * prompt_words), max_new_tokens=2
        )
        model.language_model.allocate_state = allocate
        return state_nbytes(states[0])

    mamba = tiny(max_length=4096)
    sizes = [state_bytes(mamba, words) for words in (4, 100, 400)]
    assert sizes[0] == sizes[1] == sizes[2] > 0
    # The same model with attention layers keeps a KV cache that grows with the prompt.
    attention = tiny(
        max_length=4096,
        language_model_config={"mixer": "attention", "mixer_config": {"num_heads": 4}},
    )
    grown = [state_bytes(attention, words) for words in (4, 100, 400)]
    assert grown[0] < grown[1] < grown[2] and grown[2] > 10 * sizes[2]


def test_a_prompt_over_the_limit_says_so(model):
    with pytest.raises(
        InputError,
        match=r"too long: 4 image tokens \+ \d+ text tokens = \d+ > the model's max_length 256",
    ):
        model.generate(torch.rand(1, 3, 16, 16), "digit " * 300, max_new_tokens=4)


def test_stages_choose_what_trains():
    align = mambaverse.create_model("cobra_tiny", stage="align")
    trainable = {n.split(".")[0] for n, p in align.named_parameters() if p.requires_grad}
    assert trainable == {"projector"}
    finetune = mambaverse.create_model("cobra_tiny")  # default stage: finetune
    trainable = {n.split(".")[0] for n, p in finetune.named_parameters() if p.requires_grad}
    assert trainable == {"projector", "language_model"}
    finetune.train()
    assert finetune.training and not finetune.towers.training  # frozen towers stay in eval mode
    everything = mambaverse.create_model("cobra_tiny", train_towers=True).train()
    assert all(p.requires_grad for p in everything.parameters()) and everything.towers.training
    with pytest.raises(UnknownNameError, match="'align'"):
        mambaverse.create_model("cobra_tiny", stage="alignn")


def test_the_finetune_stage_can_start_from_the_align_projector(model, tmp_path, monkeypatch):
    mambaverse.save_pretrained(model, tmp_path / "align")
    finetune = mambaverse.create_model("cobra_tiny", projector_from=str(tmp_path / "align"))
    for (name, p), q in zip(
        model.projector.state_dict().items(), finetune.projector.state_dict().values()
    ):
        torch.testing.assert_close(p, q, msg=name)
    lm_before = next(model.language_model.parameters())
    assert not torch.equal(
        lm_before, next(finetune.language_model.parameters())
    )  # only the projector
    with pytest.raises(ConfigError, match="do not exist"):
        mambaverse.create_model("cobra_tiny", projector_from=str(tmp_path / "nothing"))

    # The finetuned checkpoint holds the projector: it loads once the align run is gone, and
    # from another working directory.
    mambaverse.save_pretrained(finetune, tmp_path / "finetuned")
    config = json.loads((tmp_path / "finetuned" / "config.json").read_text())
    assert config["mambaverse"]["config"]["projector_from"] is None
    __import__("shutil").rmtree(tmp_path / "align")
    monkeypatch.chdir(tmp_path.parent)
    again = mambaverse.load_pretrained(tmp_path / "finetuned")
    for p, q in zip(finetune.state_dict().values(), again.state_dict().values()):
        assert torch.equal(p, q)


def test_the_language_model_is_chosen_by_name_and_covers_the_tokenizer():
    model = mambaverse.create_model("cobra_tiny", language_model="mamba2_micro")
    assert model.language_model.vocab_size == model.tokenizer.vocab_size == 49409  # was 256
    with pytest.raises(UnknownNameError, match="mamba_micro"):
        mambaverse.create_model("cobra_tiny", language_model="mamba_mikro")
    with pytest.raises(ConfigError, match="smaller than the tokenizer's 49409"):
        mambaverse.create_model("cobra_tiny", language_model_config={"vocab_size": 300})


def test_the_published_cobra_shape_builds_on_the_meta_device():
    import timm
    from open_clip import tokenizer  # noqa: F401  (import outside the meta context)

    with torch.device("meta"):
        cobra = mambaverse.create_model("cobra_3b")
        dino = timm.create_model("vit_large_patch14_reg4_dinov2", num_classes=0, img_size=384)
        siglip = timm.create_model("vit_so400m_patch14_siglip_384", num_classes=0)
        lm = mambaverse.create_model("mamba_2.8b")

    def count(module):
        return sum(p.numel() for p in module.parameters())

    fused, d = 1024 + 1152, 2560
    projector = (fused * 4 * fused + 4 * fused) + (4 * fused * d + d) + (d * d + d)
    assert count(cobra) == count(dino) + count(siglip) + projector + count(lm)
    assert cobra.towers.num_features == fused and cobra.language_model.padded_vocab_size == 50280
    assert cobra.template.name == "chat" and cobra.max_length == 2048
    assert 3.5e9 < count(cobra) < 3.6e9


def test_checkpoint_round_trip_and_caption_command(model, tmp_path, capsys):
    from PIL import Image

    mambaverse.save_pretrained(model, tmp_path / "ckpt")
    loaded = mambaverse.load_pretrained(tmp_path / "ckpt").eval()
    images = torch.rand(2, 3, 16, 16)
    ids = model.encode(["q", "q"], ["a", "b"])["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, ids), model(images, ids))

    paths = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray((images[i].permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(
            path
        )
        paths.append(str(path))
    expected = model.generate(paths, max_new_tokens=5)
    missing = str(tmp_path / "missing.png")
    argv = ["caption", "--checkpoint", str(tmp_path / "ckpt"), paths[0], missing, paths[1]]
    status = main([*argv, "--max-new-tokens", "5", "--json"])
    out, err = capsys.readouterr()
    assert status == 1  # one image was missing; the others are still captioned
    assert "missing.png' does not exist" in err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["image"] for line in lines] == paths
    assert [line["caption"] for line in lines] == expected
    assert main(["caption", "--checkpoint", str(tmp_path), paths[0]]) == 2  # not a checkpoint
    capsys.readouterr()
    too_long = [*argv[:4], "--prompt", "digit " * 300]  # a prompt over max_length: one line
    assert main(too_long) == 2
    assert "caption: error: the prompt plus max_new_tokens is too long" in capsys.readouterr().err
    nowhere = ["caption", "--checkpoint", str(tmp_path / "nowhere"), paths[0], "--device", "foo"]
    assert main(nowhere) == 2  # the device is checked before the (missing) model is loaded
    assert "caption: error: --device foo: not a device; use cpu or cuda" in capsys.readouterr().err


def test_a_training_sequence_over_max_length_names_both_parts_and_the_fixes(model):
    images = torch.rand(1, 3, 16, 16)
    image_tokens = model.embed_images(images).shape[1]
    ids = torch.zeros(1, model.max_length - image_tokens + 1, dtype=torch.long)
    with pytest.raises(InputError) as err:
        model(images, ids)
    assert f"the sequence is too long: {image_tokens} image tokens + {ids.shape[1]} text" in str(
        err.value
    )
    assert "use smaller images (fewer image tokens) or shorter texts, or raise max_length" in str(
        err.value
    )


def test_an_empty_prompt_is_a_prompt_and_stop_tokens_add_to_the_end_of_text(model, monkeypatch):
    calls = []
    lm_generate = model.language_model.generate

    def spy(input_ids, *args, **kwargs):
        out = lm_generate(input_ids, *args, **kwargs)
        calls.append((input_ids.tolist(), kwargs["eos_token_id"], out[:, input_ids.shape[1] :]))
        return out

    monkeypatch.setattr(model.language_model, "generate", spy)
    image, eot = torch.rand(1, 3, 16, 16), model.tokenizer.eot_token_id
    model.generate(image, "", max_new_tokens=6)
    assert calls[-1][0] == [model.template.prompt_ids(model.tokenizer, "")]  # not the default
    free = calls[-1][2][0].tolist()
    stop = free[1]
    model.generate(image, "", max_new_tokens=6, eos_token_id=stop)
    _, eos, new = calls[-1]
    assert eos == [eot, stop]
    assert new[0].tolist() == free[: free.index(stop) + 1]


def test_images_as_uint8_tensors_lists_of_tensors_or_pil_give_the_same_answer(model):
    from PIL import Image

    from mambaverse.plugins.cobra.images import as_pixels

    raw = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    pixels = raw.float() / 255
    torch.testing.assert_close(as_pixels(raw, 16), pixels)
    torch.testing.assert_close(as_pixels(list(raw), 16), pixels)
    torch.testing.assert_close(as_pixels([raw[:1], raw[1:]], 16), pixels)  # batches, joined
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in raw]
    torch.testing.assert_close(as_pixels(pil, 16), pixels)
    assert model.generate(raw, max_new_tokens=4) == model.generate(pixels, max_new_tokens=4)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(1, 3, 16, 16) * 255, r"pixel values from .* expected \[0, 1\].*divide"),
        (torch.rand(1, 16, 16, 3), r"channels last: \.permute\(0, 3, 1, 2\)"),
        (torch.rand(0, 3, 16, 16), r"batch >= 1"),
        ([], r"none were given"),
        ([torch.rand(3, 16, 16), torch.rand(3, 8, 8)], r"sizes \[\(8, 8\), \(16, 16\)\]"),
        (torch.rand(1, 16, 16, 3).numpy(), r"numpy array .*torch\.from_numpy"),
    ],
)
def test_images_the_model_cannot_take_are_named_with_the_fix(model, images, message):
    with pytest.raises(ValueError, match=message):
        model.generate(images, max_new_tokens=2)


def test_generate_runs_in_inference_mode(model, monkeypatch):
    seen = []
    embed = model.embed_images

    def spy(pixels):
        seen.append(torch.is_inference_mode_enabled())
        return embed(pixels)

    monkeypatch.setattr(model, "embed_images", spy)
    model.generate(torch.rand(1, 3, 16, 16), max_new_tokens=2)
    assert seen == [True]
