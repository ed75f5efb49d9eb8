"""The pieces the suites are built from: matched-size models, the Transformer VLM path, the
measurement's failure handling and the synthetic tasks' data."""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytest
import torch

import mambaverse
from mambaverse.bench.language_models import (
    LMSpec,
    hybrid_lm_config,
    hybrid_pattern,
    lm_family,
    matched_layers,
)
from mambaverse.bench.measure import OOM, measure
from mambaverse.bench.synthetic import PAPER_LR, family, for_model, make_batch, per_model

MAMBA = {"vocab_size": 96, "pad_vocab_size_multiple": 8, "d_model": 32, "n_layer": 3,
         "mixer": "mamba", "mixer_config": {"d_state": 8, "d_conv": 4, "expand": 2}}  # fmt: skip


def test_hybrid_pattern_is_jambas() -> None:
    # Jamba-v0.1: periods of eight layers, attention at index 4 ("mmmmammm").
    assert hybrid_pattern(8) == "mmmmammm"
    assert hybrid_pattern(16) == "mmmmammm" * 2
    assert hybrid_pattern(11) == "mmmmammmmmm"
    assert hybrid_pattern(2) == "ma"  # shorter than a period: one attention layer, in the middle


@pytest.mark.parametrize("pattern", [lambda n: "a" * n, hybrid_pattern])
def test_matched_layers_is_the_closest_parameter_count(pattern) -> None:
    target = LMSpec("", "mamba_lm", MAMBA).count_parameters()
    counts = {
        n: LMSpec("", "hybrid_lm", hybrid_lm_config(MAMBA, pattern(n), 16)).count_parameters()
        for n in range(2, 13)
    }  # every candidate built and counted: the oracle for the linear shortcut
    best = min(counts, key=lambda n: abs(counts[n] - target))
    assert matched_layers(MAMBA, pattern, 16) == best


def test_family_labels_and_kernels() -> None:
    specs = lm_family(MAMBA, {**MAMBA, "mixer": "mamba2"}, attention_impls=["sdpa", "reference"])
    assert [s.label for s in specs][:2] == ["Mamba", "Mamba-2"]
    transformers = [s for s in specs if s.label.startswith("Transformer")]
    assert [s.config["kernels"] for s in transformers] == [
        {"attention": "sdpa"},
        {"attention": "reference"},
    ]
    assert set(transformers[0].config["layers"]) == {"a"}


def test_transformer_lm_generates_after_prefix_embeds() -> None:
    """A hybrid_lm (the Transformer of the generation suite) continues after image embeddings:
    decoding with its KV cache gives the tokens that full forwards give."""
    torch.manual_seed(0)
    model = mambaverse.build_backbone("hybrid_lm", hybrid_lm_config(MAMBA, "ma", 16)).eval()
    ids, prefix = torch.randint(0, 96, (2, 5)), torch.randn(2, 3, 32)
    generated = model.generate(ids, 4, prefix_embeds=prefix)
    expected = ids
    with torch.no_grad():
        for _ in range(4):
            logits = model(expected, prefix_embeds=prefix)[:, -1, :96]
            expected = torch.cat([expected, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(generated, expected)


def test_measure_reports_oom_and_errors_and_counts_calls() -> None:
    calls = []
    m = measure(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=3)
    assert m.ok and len(calls) == 5 and m.ms >= 0 and m.peak_bytes is None
    assert m.back_to_back_ms is None


def test_back_to_back_time_is_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def ten_ms() -> None:
        clock[0] += 0.010

    m = measure(ten_ms, torch.device("cpu"), warmup=1, repeats=4, back_to_back=True)
    assert clock[0] == pytest.approx(0.090)  # 1 warm-up + 4 timed one by one + 4 back to back
    assert m.ms == pytest.approx(10.0) and m.back_to_back_ms == pytest.approx(10.0)

    def oom() -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert measure(oom, torch.device("cpu")).status == OOM

    def refuses() -> None:
        raise ValueError("block size too large\nmore")

    assert measure(refuses, torch.device("cpu")).status == "error: ValueError: block size too large"


def _task_args() -> argparse.Namespace:
    return argparse.Namespace(vocab=16, copy_tokens=5)


def test_induction_heads_batches() -> None:
    ids, labels = make_batch("induction_heads", np.random.default_rng(1), 64, 40, _task_args())
    assert ids.shape == labels.shape == (64, 40)
    for row, label in zip(ids.tolist(), labels.tolist()):
        trigger = row[-1]
        first = row.index(trigger)  # the trigger's only other appearance
        assert first < 38 and row[first + 1 :].count(trigger) == 1
        assert label[-1] == row[first + 1] and set(label[:-1]) == {-100}


def test_selective_copying_batches() -> None:
    ids, labels = make_batch("selective_copying", np.random.default_rng(2), 32, 30, _task_args())
    assert ids.shape == labels.shape == (32, 35)  # context 30, then 5 recall markers
    for row, label in zip(ids.tolist(), labels.tolist()):
        data = [t for t in row[:30] if t >= 2]  # noise 0, recall marker 1
        assert len(data) == 5 and row[30:] == [1] * 5
        assert label[30:] == data and set(label[:30]) == {-100}


def test_induction_heads_trigger_position_is_uniform() -> None:
    # The paper's task (Dao, Fu et al. 2023's generator): the first trigger anywhere from the
    # start to L - 3, uniformly, so that both the shortest and the longest recalls are trained.
    length, size = 10, 8000
    ids, _ = make_batch("induction_heads", np.random.default_rng(3), size, length, _task_args())
    first = (ids == 0).int().argmax(1)
    counts = torch.bincount(first, minlength=length)
    expected = size / (length - 2)
    assert counts[length - 2 :].sum() == 0  # never at the value's or the query's place
    assert ((counts[: length - 2] - expected).abs() < 5 * expected**0.5).all()  # 5 sigma


def test_per_model_option() -> None:
    assert per_model("3e-4") == {"*": 3e-4}
    both = per_model("mamba=1e-3, transformer=2e-4")
    assert both == {"mamba": 1e-3, "transformer": 2e-4}
    # unnamed models fall back to "*", then to the default
    assert for_model(both, "transformer", None) == 2e-4
    assert for_model({"*": 5.0, "hybrid": 1.0}, "mamba2", None) == 5.0
    assert for_model(None, "transformer", PAPER_LR["transformer"]) == 2e-4
    for bad in ("mamaba=1e-3", "fast", "mamba=x"):
        with pytest.raises(argparse.ArgumentTypeError):
            per_model(bad)


def test_synthetic_models_have_the_papers_shapes() -> None:
    args = argparse.Namespace(vocab=16, d_model=64, attention_d_model=128, heads=8, n_layer=2,
                              d_state=16)  # fmt: skip
    (_, mamba), (_, mha) = family(args, ["mamba", "transformer"])
    # Attention only, as the paper's 137K-parameter MHA models: per layer Wq, Wk, Wv, Wo
    # (128 x 128, no bias) and an RMSNorm; the tied embedding and the final norm.
    d, v = 128, 16
    assert mha.count_parameters() == 2 * (4 * d * d + d) + v * d + d
    model = mha.build()
    assert [block.mixer.num_heads for block in model.layers] == [8, 8]
    # Mamba at width 64 (d_inner 128, dt_rank 4, 16 states): in_proj, conv, x_proj, dt_proj,
    # A_log, D, out_proj and the norm per layer; embedding and final norm.
    e, n, r = 128, 16, 4
    layer = 64 * 2 * e + e * 4 + e + e * (r + 2 * n) + r * e + e + e * n + e + e * 64 + 64
    assert mamba.count_parameters() == 2 * layer + v * 64 + 64


def test_curriculum_option() -> None:
    from mambaverse.bench.synthetic import curriculum

    assert curriculum("16:400,64:800") == [(16, 400), (64, 800)]
    for bad in ("16:800,64:400", "16", "a:1"):
        with pytest.raises(argparse.ArgumentTypeError):
            curriculum(bad)


@pytest.mark.slow
def test_mamba_learns_induction_heads_with_the_papers_recipe() -> None:
    # The suite's own training and test at a CPU-sized length: trained at 16, right at 4x.
    from mambaverse.bench import suite_parser
    from mambaverse.bench.report import apply_defaults
    from mambaverse.bench.synthetic import FULL, SMOKE, evaluate, train

    args = suite_parser("synthetic").parse_args(
        ["--train-length", "16", "--steps", "800", "--eval-samples", "256", "--out", "unused"]
    )
    apply_defaults(args, FULL, SMOKE)
    ((name, spec),) = family(args, ["mamba"])
    torch.manual_seed(0)
    model = spec.build()
    record = train(model, name, "induction_heads", args, spec.label)
    assert record["lr"] == 1e-3 and record["steps_run"] == 800
    assert evaluate(model, "induction_heads", 16, args)[0] >= 0.95
    assert evaluate(model, "induction_heads", 64, args)[0] >= 0.9
