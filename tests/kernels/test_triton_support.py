"""Helpers shared by the Triton kernels."""

from __future__ import annotations

import pytest

from mambaverse.kernels.triton_support import stride_alignment


@pytest.mark.parametrize(
    "strides, expected",
    [
        ((3352,), 8),  # Mamba-2-130m's in_proj width: 8 · 419
        ((3072, 6144), 16),  # capped at 16 (16 bytes of bf16 need 8)
        ((1792, 3352), 8),  # the weakest stride decides
        ((1, 1792), 1),  # a unit stride: nothing to declare on that axis
        ((0, 24), 8),  # a broadcast (stride 0) constrains nothing
        ((777,), 1),
        ((4112 * 768,), 16),
    ],
)
def test_stride_alignment_is_the_largest_power_of_two_up_to_16_dividing_every_stride(
    strides, expected
):
    assert stride_alignment(*strides) == expected
    assert all(stride % expected == 0 for stride in strides)
