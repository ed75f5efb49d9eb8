"""Step-by-step decoding with the recurrent state reproduces the parallel forward, in constant memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mambaverse
from mambaverse.plugins.mamba_lm.generation import state_nbytes

MIXERS = {
    "mamba": {"d_state": 8, "d_conv": 4},
    "mamba2": {"d_state": 8, "d_conv": 4, "headdim": 8, "ngroups": 2, "chunk_size": 4},
    "attention": {"num_heads": 4, "num_kv_heads": 2},
}


def tiny_lm(
    mixer: str, dtype: torch.dtype = torch.float64, seed: int = 0, mixer_config: dict | None = None
):
    torch.manual_seed(seed)
    model = mambaverse.create_model(
        "mamba_micro",
        d_model=32,
        n_layer=2,
        vocab_size=50,
        mixer=mixer,
        mixer_config=MIXERS[mixer] if mixer_config is None else mixer_config,
    )
    with torch.no_grad():  # move D, norms and biases away from their regular init values
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype).eval()


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("prompt_length", [2, 7])  # shorter and longer than the conv window
def test_prefill_then_steps_reproduce_full_forward(mixer, prompt_length):
    model = tiny_lm(mixer)
    input_ids = torch.randint(0, 50, (3, 13))
    with torch.no_grad():
        expected = model(input_ids)  # (3, 13, V)
        state = model.allocate_state(3, max_seqlen=13)
        prefill = model(input_ids[:, :prompt_length], state)
        steps = [model.step(input_ids[:, t], state) for t in range(prompt_length, 13)]
    actual = torch.cat([prefill, torch.stack(steps, dim=1)], dim=1)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_decoding_from_an_empty_state_matches_forward():
    model = tiny_lm("mamba2")
    input_ids = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        state = model.allocate_state(2, max_seqlen=6)
        steps = torch.stack([model.step(input_ids[:, t], state) for t in range(6)], dim=1)
        torch.testing.assert_close(steps, model(input_ids), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
def test_ssm_state_has_constant_size_and_is_updated_in_place(mixer):
    model = tiny_lm(mixer, dtype=torch.float32)
    short, long = model.allocate_state(2, max_seqlen=8), model.allocate_state(2, max_seqlen=10_000)
    assert state_nbytes(short) == state_nbytes(long)

    state = model.allocate_state(2, max_seqlen=8)
    buffers = [(s.conv.data_ptr(), s.ssm.data_ptr()) for s in state]
    size = state_nbytes(state)
    with torch.no_grad():
        model(torch.randint(0, 50, (2, 5)), state)
        for _ in range(40):
            model.step(torch.randint(0, 50, (2,)), state)
    assert state_nbytes(state) == size
    assert [(s.conv.data_ptr(), s.ssm.data_ptr()) for s in state] == buffers

    mixer_module = model.layers[0].mixer
    channels = mixer_module.d_inner if mixer == "mamba" else mixer_module.conv_dim
    per_layer = 2 * channels * 4 * 4 + 2 * mixer_module.d_inner * 8 * 4  # conv + ssm, float32
    assert size == model.n_layer * per_layer


def test_attention_cache_refuses_to_overflow():
    model = tiny_lm("attention")
    state = model.allocate_state(1, max_seqlen=3)
    with torch.no_grad():
        model(torch.randint(0, 50, (1, 3)), state)
        with pytest.raises(ValueError, match="exceed its max_seqlen 3"):
            model.step(torch.tensor([1]), state)


def test_generate_greedy_equals_argmax_of_full_forward():
    model = tiny_lm("mamba")
    prompt = torch.randint(0, 50, (2, 4))
    generated = model.generate(prompt, max_new_tokens=6)
    assert generated.shape == (2, 10)
    assert torch.equal(generated[:, :4], prompt)
    with torch.no_grad():
        logits = model(generated)[:, 3:-1, : model.vocab_size]  # predictions of tokens 4..9
    assert torch.equal(logits.argmax(-1), generated[:, 4:])


def test_generate_never_picks_padded_vocabulary_rows():
    model = tiny_lm("mamba")  # vocab 50 padded to 56
    assert model.padded_vocab_size == 56
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.clone())
        model.lm_head.weight[50:] = 100.0  # the padding rows would win every argmax
    generated = model.generate(torch.randint(0, 50, (2, 3)), max_new_tokens=5)
    assert int(generated.max()) < 50


def test_generate_stops_at_eos_and_pads_finished_sequences():
    model = tiny_lm("mamba2")
    prompt = torch.randint(0, 50, (2, 4))
    free = model.generate(prompt, max_new_tokens=8)
    eos = int(free[0, 6])  # the 3rd token sequence 0 generates
    stopped = model.generate(prompt, max_new_tokens=8, eos_token_id=[eos, 49])
    first_eos = [
        next((i for i in range(4, free.shape[1]) if int(free[b, i]) in (eos, 49)), None)
        for b in range(2)
    ]
    for b in range(2):
        end = first_eos[b]
        if end is None:
            assert torch.equal(stopped[b], free[b])
        else:
            assert torch.equal(stopped[b, : end + 1], free[b, : end + 1])
            assert (stopped[b, end + 1 :] == stopped[b, end]).all()  # its own end token
    if all(end is not None for end in first_eos):
        assert stopped.shape[1] == max(first_eos) + 1


@pytest.mark.parametrize("as_given", [list, np.int64, torch.tensor])
def test_eos_ids_of_any_integer_kind_and_outside_the_vocabulary(as_given):
    model = tiny_lm("mamba")
    prompt = torch.randint(0, 50, (2, 4))
    free = model.generate(prompt, max_new_tokens=8)
    eos = int(free[0, 6])
    ids = as_given([999, eos]) if as_given is not np.int64 else np.int64(eos)
    # 999 is no token of this model: it is never emitted, and never fed back as padding while
    # the other row goes on.
    stopped = model.generate(prompt, max_new_tokens=8, eos_token_id=ids)
    end = next(i for i in range(4, 12) if int(free[0, i]) == eos)
    assert torch.equal(stopped[0, : end + 1], free[0, : end + 1])
    assert (stopped[0, end + 1 :] == eos).all()
    ends = [i for i in range(4, 12) if int(free[1, i]) == eos]
    last = ends[0] + 1 if ends else 12
    assert torch.equal(stopped[1, :last], free[1, :last])


def test_generated_ids_are_ordinary_tensors():
    model = tiny_lm("mamba", dtype=torch.float32).train()
    out = model.generate(torch.randint(0, 50, (2, 3)), max_new_tokens=4)
    assert not torch.is_inference(out)
    out[out == 7] = 0  # edited in place, as transformers' output can be
    model(out).logsumexp(-1).mean().backward()  # and scored with gradients
    assert model.lm_head.weight.grad is not None


@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
def test_a_second_prefill_into_a_used_state_is_refused(mixer):
    model = tiny_lm(mixer)
    state = model.allocate_state(1, max_seqlen=12)
    ids = torch.randint(0, 50, (1, 11))
    with torch.no_grad():
        model(ids[:, :6], state)
        with pytest.raises(ValueError, match=r"already holds a sequence.*allocate_state"):
            model(ids[:, 6:], state)
        stepped = model.allocate_state(1, max_seqlen=12)  # tokens stored by steps count too
        model.step(ids[:, 0], stepped)
        with pytest.raises(ValueError, match=r"already holds a sequence"):
            model(ids[:, 1:], stepped)


def test_sampling_is_reproducible_with_a_generator_and_top_k_1_is_greedy():
    model = tiny_lm("mamba")
    prompt = torch.randint(0, 50, (2, 3))

    def sample(seed, **options):
        generator = torch.Generator().manual_seed(seed)
        return model.generate(prompt, max_new_tokens=6, generator=generator, **options)

    assert torch.equal(sample(0, temperature=0.7), sample(0, temperature=0.7))
    assert torch.equal(sample(1, top_k=1, do_sample=True), model.generate(prompt, 6))


def test_kernel_choice_in_the_model_config_reaches_the_mixers(monkeypatch):
    # A registered implementation that cannot run on CPU tensors: the mixers ask for it.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = mambaverse.create_model("mamba_micro", kernels={"selective_scan": "triton"})
    with pytest.raises(mambaverse.KernelUnavailableError, match="selective_scan=triton"):
        model(torch.randint(0, 256, (1, 4)))


def test_prefix_embeddings_act_like_the_tokens_they_embed():
    model = tiny_lm("mamba2")
    prefix, prompt = torch.randint(0, 50, (2, 5)), torch.randint(0, 50, (2, 3))
    with torch.no_grad():
        prefix_embeds = model.embedding(prefix)
    as_tokens = model.generate(torch.cat([prefix, prompt], dim=1), max_new_tokens=4)
    as_embeddings = model.generate(prompt, max_new_tokens=4, prefix_embeds=prefix_embeds)
    assert torch.equal(as_embeddings, as_tokens[:, 5:])


@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
def test_a_step_computes_every_layers_A_at_once_and_follows_in_place_weight_changes(
    mixer, monkeypatch
):
    """One decoding step takes each layer's A = -exp(A_log) from one batched computation (the
    layers' A are views of one tensor during the step; outside a step each layer computes its
    own), recomputed every step: an in-place change of A_log between steps is seen at once."""
    from mambaverse.plugins.mixers.mamba import DecayRates

    model = tiny_lm(mixer)
    layers = [m for m in model.modules() if isinstance(m, DecayRates)]
    seen = []
    original = DecayRates.decoding_A

    def recording(self):
        A = original(self)
        seen.append((A, A.untyped_storage().data_ptr()))
        torch.testing.assert_close(A, self.A, rtol=0, atol=0)
        return A

    monkeypatch.setattr(DecayRates, "decoding_A", recording)
    ids = torch.randint(0, 50, (2, 4))
    with torch.no_grad():
        state = model.allocate_state(2, max_seqlen=4)
        model(ids[:, :3], state)
        model.step(ids[:, 3], state)
        assert len(seen) == 2 and seen[0][1] == seen[1][1]  # one tensor for both layers
        outside = layers[0].decoding_A()  # outside a step: its own
        assert outside.untyped_storage().data_ptr() != seen[0][1]

        layers[1].A_log.add_(0.5)  # in place, as an optimizer step
        fresh = tiny_lm(mixer)
        fresh.load_state_dict(model.state_dict())
        states = [m.allocate_state(2, max_seqlen=4) for m in (model, fresh)]
        for m, s in zip((model, fresh), states, strict=True):
            m(ids[:, :3], s)
        torch.testing.assert_close(
            model.step(ids[:, 3], states[0]), fresh.step(ids[:, 3], states[1])
        )
    # seen: step 1 (layers 0, 1), outside (layer 0), model's step 2 (layers 0, 1), fresh's step
    torch.testing.assert_close(seen[4][0], layers[1].A, rtol=0, atol=0)


def test_batched_decay_rates_stay_float32_in_a_bfloat16_model(monkeypatch):
    from mambaverse.plugins.mixers.mamba import DecayRates, step_decay_rates

    model = tiny_lm("mamba", dtype=torch.bfloat16)
    layers = [m for m in model.modules() if isinstance(m, DecayRates)]
    with torch.no_grad(), step_decay_rates(model):
        rates = [layer.decoding_A() for layer in layers]
    assert all(A.dtype == torch.float32 for A in rates)
    torch.testing.assert_close(rates[1], -torch.exp(layers[1].A_log.float()), rtol=0, atol=0)


def _left_padded(prompts, pad_id=5):
    length = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.full((length - len(p),), pad_id), p]) for p in prompts])
    mask = torch.stack(
        [torch.cat([torch.zeros(length - len(p)), torch.ones(len(p))]) for p in prompts]
    ).long()
    return ids, mask


@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
def test_left_padded_prompts_compute_and_generate_as_if_alone(mixer):
    config = {**MIXERS[mixer], "bias": True}  # biases: a pad's projection is not zero
    model = tiny_lm(mixer, mixer_config=config)
    prompts = [torch.randint(0, 50, (n,)) for n in (3, 9, 1)]
    ids, mask = _left_padded(prompts)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask)
        for row, prompt in enumerate(prompts):
            alone = model(prompt[None])[0]
            torch.testing.assert_close(logits[row, -len(prompt) :], alone, rtol=1e-10, atol=1e-10)
    out = model.generate(ids, max_new_tokens=6, attention_mask=mask)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], max_new_tokens=6)[0, len(prompt) :]
        assert torch.equal(out[row, ids.shape[1] :], alone)


def test_padding_that_cannot_be_honoured_is_refused():
    model = tiny_lm("mamba")
    ids, mask = _left_padded([torch.randint(0, 50, (n,)) for n in (2, 4)])
    with pytest.raises(ValueError, match="only left padding is supported"):
        model(ids, attention_mask=mask.flip(-1))  # right padding
    attention = tiny_lm("attention")
    with pytest.raises(ValueError, match=r"attention mixer: left-padded prompts .* equal length"):
        attention.generate(ids, max_new_tokens=2, attention_mask=mask)
    hybrid = mambaverse.create_model("jamba_micro")
    with pytest.raises(ValueError, match="HybridLM takes no attention_mask"):
        hybrid.generate(ids, max_new_tokens=2, attention_mask=mask)
    # No padding at all: the mask changes nothing, whatever the mixers.
    full = torch.ones_like(ids)
    assert torch.equal(attention.generate(ids, 3, attention_mask=full), attention.generate(ids, 3))
