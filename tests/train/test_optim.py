"""Optimiser set-up: weight-decay groups, freezing by pattern, and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mambaverse.errors import ConfigError
from mambaverse.train.config import OptimSection, ScheduleSection
from mambaverse.train.optim import build_optimizer, build_scheduler, freeze


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(4, 8)
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 8))
        self.norm = nn.LayerNorm(8)
        self.mixer = nn.Linear(8, 8)
        self.A_log = nn.Parameter(torch.zeros(8, 4))
        self.A_log._no_weight_decay = True  # the Mamba reference's mark
        self.head = nn.Linear(8, 2)

    def no_weight_decay(self):
        return {"pos_embed"}


def names_of(model, params):
    ids = {id(p) for p in params}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_weight_decay_only_on_matrices_not_exempted():
    model = Net()
    optimizer = build_optimizer(model, OptimSection(weight_decay=0.1))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert names_of(model, decay["params"]) == ["head.weight", "mixer.weight", "patch_embed.weight"]
    assert names_of(model, no_decay["params"]) == [
        "A_log", "head.bias", "mixer.bias", "norm.bias", "norm.weight", "patch_embed.bias", "pos_embed",
    ]  # fmt: skip


def test_freezing_by_pattern_keeps_parameters_out_of_the_optimiser():
    model = Net()
    assert freeze(model, ["patch_embed.*", "pos_embed"]) == 3
    optimizer = build_optimizer(model, OptimSection())
    trained = names_of(model, [p for g in optimizer.param_groups for p in g["params"]])
    assert (
        "patch_embed.weight" not in trained
        and "pos_embed" not in trained
        and "head.bias" in trained
    )
    with pytest.raises(
        ConfigError,
        match=r"pattern 'vision\.\*' matches no parameter; names look like: pos_embed, A_log, ",
    ):
        freeze(Net(), ["vision.*"])
    everything = Net()
    freeze(everything, ["*"])
    with pytest.raises(ConfigError, match="every parameter is frozen"):
        build_optimizer(everything, OptimSection())


@pytest.mark.parametrize(("warmup", "min_ratio"), [(0, 0.0), (5, 0.0), (4, 0.1)])
def test_schedule_is_linear_warmup_then_cosine(warmup, min_ratio):
    total, peak = 30, 0.5
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=peak)
    scheduler = build_scheduler(
        optimizer, total, ScheduleSection(warmup_steps=warmup, min_lr_ratio=min_ratio)
    )
    used = []
    for _ in range(total):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for step, lr in enumerate(used):
        if step < warmup:
            expected = peak * (step + 1) / warmup
        else:
            cosine = 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
            expected = peak * (min_ratio + (1 - min_ratio) * cosine)
        assert lr == pytest.approx(expected, rel=1e-12)
    assert max(used) == pytest.approx(peak)
    assert used[-1] < peak * (min_ratio + 0.01)
