"""Helpers shared by the Triton kernels."""

from __future__ import annotations

import math

import pytest
import torch
import triton

from mambaverse.errors import KernelUnavailableError
from mambaverse.kernels.attention import triton as attention_kernels
from mambaverse.kernels.ssd_scan import triton as ssd_kernels
from mambaverse.kernels.triton_support import (
    MAX_SPAN,
    cdiv,
    check_interpretable_dot,
    check_offsets,
    next_pow2,
    stride_alignment,
)


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


def test_host_integer_helpers_agree_with_tritons_and_the_definitions():
    for n in [*range(0, 300), 1023, 1024, 1025, 3352, 2**20 - 1, 2**20, 2**31 + 5]:
        assert next_pow2(n) == triton.next_power_of_2(max(n, 1))
        assert next_pow2(n) >= max(n, 1) and next_pow2(n) // 2 < max(n, 1)
        for d in (1, 3, 16, 64, 256, 4099):
            assert cdiv(n, d) == triton.cdiv(n, d) == math.ceil(n / d)


def test_offsets_within_a_batch_element_must_fit_32_bits():
    # Mamba-2 2.7B's Δ is a slice of 10,576-wide in_proj rows: 203,000 steps fit, 204,000 do not.
    rows = torch.empty(4, 204_000, 10_576, device="meta")
    check_offsets("op", {"dt": rows[:, :203_000, -80:], "absent": None}, "way out")
    with pytest.raises(ValueError, match=r"op \(triton\): dt of shape \(4, 204000, 80\).* way out"):
        check_offsets("op", {"dt": rows[..., -80:]}, "way out")
    # the batch dimension is free (64-bit there), a contiguous tensor just under the limit fits
    check_offsets("op", {"x": torch.empty(1000, MAX_SPAN // 64, 64, device="meta")}, "")
    with pytest.raises(ValueError):
        check_offsets("op", {"x": torch.empty(1, MAX_SPAN // 64 + 1, 64, device="meta")}, "")


def test_the_interpreter_refuses_bfloat16_dot_operands(monkeypatch):
    # Triton's interpreter multiplies bfloat16 dot operands as raw uint16 bits (triton#11584):
    # the ops whose kernels call tl.dot refuse them there, before any launch.
    x = torch.randn(1, 16, 2, 4).bfloat16()
    dt, A = torch.rand(1, 16, 2), -torch.rand(2)
    B = torch.randn(1, 16, 1, 8).bfloat16()
    q = torch.randn(1, 2, 16, 16).bfloat16()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(KernelUnavailableError, match=r"ssd_scan \(triton\): x is bfloat16.*11584"):
        ssd_kernels.ssd_scan(x, dt, A, B, B, 16)
    with pytest.raises(KernelUnavailableError, match=r"attention \(triton\): q is bfloat16"):
        attention_kernels.attention(q, q, q)
    check_interpretable_dot("op", {"x": x.half(), "y": x.float(), "absent": None})
    monkeypatch.delenv("TRITON_INTERPRET")
    check_interpretable_dot("op", {"x": x})  # compiled kernels multiply bfloat16 correctly
