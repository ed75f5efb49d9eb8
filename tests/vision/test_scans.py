"""The 2-D scans: index orders against the papers' code, merge ∘ flatten, and adjointness.

The expected orders below were produced by running the official functions on a grid holding each
cell's row-major index: ``cross_scan_fwd`` (MzeroMiko/VMamba, classification/models/csm_triton.py)
and ``EfficientScan`` (TerryPei/EfficientVMamba, classification/lib/models/mamba/efficient_scan.py),
and Vim's ``xz`` / ``xz.flip([-1])`` (hustvl/Vim, mamba-1p1p1/mamba_ssm/modules/mamba_simple.py).
"""

from __future__ import annotations

import pytest
import torch

import mambaverse

ROWS_6x8 = list(range(48))
COLUMNS_6x8 = [c + 8 * r for c in range(8) for r in range(6)]

EXPECTED = {
    ("causal", 4, 4): [list(range(16))],
    ("causal", 6, 8): [ROWS_6x8],
    ("bidirectional", 4, 4): [list(range(16)), list(range(15, -1, -1))],
    ("bidirectional", 6, 8): [ROWS_6x8, ROWS_6x8[::-1]],
    ("cross2d", 4, 4): [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15],
        [15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
        [15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0],
    ],
    ("cross2d", 6, 8): [
        ROWS_6x8,
        [
            0,
            8,
            16,
            24,
            32,
            40,
            1,
            9,
            17,
            25,
            33,
            41,
            2,
            10,
            18,
            26,
            34,
            42,
            3,
            11,
            19,
            27,
            35,
            43,
            4,
            12,
            20,
            28,
            36,
            44,
            5,
            13,
            21,
            29,
            37,
            45,
            6,
            14,
            22,
            30,
            38,
            46,
            7,
            15,
            23,
            31,
            39,
            47,
        ],
        ROWS_6x8[::-1],
        [
            47,
            39,
            31,
            23,
            15,
            7,
            46,
            38,
            30,
            22,
            14,
            6,
            45,
            37,
            29,
            21,
            13,
            5,
            44,
            36,
            28,
            20,
            12,
            4,
            43,
            35,
            27,
            19,
            11,
            3,
            42,
            34,
            26,
            18,
            10,
            2,
            41,
            33,
            25,
            17,
            9,
            1,
            40,
            32,
            24,
            16,
            8,
            0,
        ],
    ],
    ("atrous", 4, 4): [[0, 2, 8, 10], [4, 12, 6, 14], [1, 3, 9, 11], [5, 13, 7, 15]],
    ("atrous", 6, 8): [
        [0, 2, 4, 6, 16, 18, 20, 22, 32, 34, 36, 38],
        [8, 24, 40, 10, 26, 42, 12, 28, 44, 14, 30, 46],
        [1, 3, 5, 7, 17, 19, 21, 23, 33, 35, 37, 39],
        [9, 25, 41, 11, 27, 43, 13, 29, 45, 15, 31, 47],
    ],
}
# EfficientScan on a 5×7 grid holding index + 1 (so 0 marks the zero padding it adds).
ATROUS_5x7_PLUS_ONE = [
    [1, 3, 5, 7, 15, 17, 19, 21, 29, 31, 33, 35],
    [8, 22, 0, 10, 24, 0, 12, 26, 0, 14, 28, 0],
    [2, 4, 6, 0, 16, 18, 20, 0, 30, 32, 34, 0],
    [9, 23, 0, 11, 25, 0, 13, 27, 0, 0, 0, 0],
]
# EfficientScan with step_size=3 on a 6×6 grid: only row/column offsets 0 and 1 are sampled.
ATROUS_6x6_STEP3 = [[0, 3, 18, 21], [6, 24, 9, 27], [1, 4, 19, 22], [7, 25, 10, 28]]

SCANS = ("causal", "bidirectional", "cross2d", "atrous")


def index_grid(height: int, width: int, offset: int = 0) -> torch.Tensor:
    return (torch.arange(height * width, dtype=torch.float64) + offset).view(1, height, width, 1)


def walked(name: str, height: int, width: int, offset: int = 0, **options) -> list[list[int]]:
    flatten, _ = mambaverse.get_scan(name).load()
    return flatten(index_grid(height, width, offset), **options)[0, :, :, 0].long().tolist()


@pytest.mark.parametrize(("name", "height", "width"), list(EXPECTED))
def test_index_order_matches_official_code(name, height, width):
    assert walked(name, height, width) == EXPECTED[(name, height, width)]


def test_atrous_pads_like_official_code():
    assert walked("atrous", 5, 7, offset=1) == ATROUS_5x7_PLUS_ONE


def test_atrous_larger_step_samples_offsets_zero_and_one():
    assert walked("atrous", 6, 6, step=3) == ATROUS_6x6_STEP3


def coverage(name: str, height: int, width: int, **options) -> torch.Tensor:
    """How many (sequence, step) pairs visit each cell, counted from the walks."""
    counts = torch.zeros(height * width, dtype=torch.long)
    for sequence in walked(name, height, width, offset=1, **options):
        for cell in sequence:
            if cell:  # 0 is padding
                counts[cell - 1] += 1
    return counts.view(1, height, width, 1)


@pytest.mark.parametrize("name", SCANS)
@pytest.mark.parametrize(("height", "width"), [(4, 4), (6, 8), (5, 7), (1, 9)])
def test_merge_of_flatten_is_coverage_times_x_exactly(name, height, width):
    spec = mambaverse.get_scan(name)
    flatten, merge = spec.load()
    # Integer-valued floats: sums of up to K copies are exact, so equality is exact.
    x = torch.randint(-1000, 1000, (3, height, width, 5)).float()
    sequences = flatten(x)
    assert sequences.shape[1] == spec.num_sequences
    expected_multiple = {"causal": 1, "bidirectional": 2, "cross2d": 4, "atrous": 1}[name]
    assert torch.equal(
        coverage(name, height, width), torch.full((1, height, width, 1), expected_multiple)
    )
    assert torch.equal(merge(sequences, height, width), expected_multiple * x)


def test_atrous_coverage_for_step_three_is_the_offset_mask():
    flatten, merge = mambaverse.get_scan("atrous").load()
    x = torch.randint(1, 1000, (2, 7, 9, 3)).float()
    h, w = torch.arange(7).view(7, 1), torch.arange(9).view(1, 9)
    mask = ((h % 3 < 2) & (w % 3 < 2)).view(1, 7, 9, 1)
    assert torch.equal(coverage("atrous", 7, 9, step=3), mask.long())
    assert torch.equal(merge(flatten(x, step=3), 7, 9, step=3), x * mask)


@pytest.mark.parametrize("name", SCANS)
def test_merge_is_the_adjoint_of_flatten(name):
    """<flatten(x), y> = <x, merge(y)>: merge is exactly the transpose of the gather."""
    flatten, merge = mambaverse.get_scan(name).load()
    x = torch.randn(2, 5, 6, 3, dtype=torch.float64)
    y = torch.randn_like(flatten(x))
    assert torch.allclose((flatten(x) * y).sum(), (x * merge(y, 5, 6)).sum(), rtol=1e-12)


@pytest.mark.parametrize("name", SCANS)
def test_bad_shapes_are_named(name):
    flatten, merge = mambaverse.get_scan(name).load()
    with pytest.raises(ValueError, match="expected a grid"):
        flatten(torch.zeros(2, 16, 3))
    with pytest.raises(ValueError, match="expected sequences"):
        merge(torch.zeros(2, 7, 16, 3), 4, 4)


def test_atrous_rejects_step_below_two():
    flatten, _ = mambaverse.get_scan("atrous").load()
    with pytest.raises(mambaverse.ConfigError, match="step must be an integer >= 2"):
        flatten(torch.zeros(1, 4, 4, 1), step=1)


def test_unknown_scan_suggests_nearest():
    with pytest.raises(mambaverse.UnknownNameError, match="cross2d"):
        mambaverse.get_scan("cross2")
