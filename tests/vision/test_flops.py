"""FLOP counting: exact on a model whose cost is written out, and close to the published counts."""

from __future__ import annotations

import pytest

import mambaverse
from mambaverse.plugins._vision.flops import count_flops


def test_vim_micro_flops_match_the_formula_from_its_shapes():
    """vim_micro at 32²: 16 patches + the class token, width 64, d_inner 128, 4 blocks of two
    directions; every matmul / conv counted as multiply-adds, each scan as 9·L·d·n + L·d (D)."""
    model = mambaverse.create_model("vim_micro")
    tokens, dim, inner, rank, state, width, depth = 17, 64, 128, 4, 8, 4, 4
    patch_embed = 16 * dim * (3 * 8 * 8)
    per_direction = (
        tokens * inner * width + tokens * inner * (rank + 2 * state) + tokens * rank * inner
    )
    per_block = tokens * dim * 2 * inner + 2 * per_direction + tokens * inner * dim
    head = dim * 1000
    flops = count_flops(model, 32)
    assert flops.matmul == patch_embed + depth * per_block + head
    assert flops.scan == depth * 2 * (9 * tokens * inner * state + tokens * inner)


def published_flops(name: str) -> float:
    return (
        float(mambaverse.model_info(name, count_params=False)["published"]["flops"].rstrip("G"))
        * 1e9
    )


def test_efficientvmamba_t_flops_match_the_paper():
    assert count_flops(mambaverse.create_model("efficientvmamba_t")).total == pytest.approx(
        published_flops("efficientvmamba_t"), rel=0.03
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["vmamba_tiny", "vmamba_small", "vmamba_base", "efficientvmamba_s", "efficientvmamba_b"]
)
def test_vmamba_family_flops_match_the_papers(name):
    assert count_flops(mambaverse.create_model(name)).total == pytest.approx(
        published_flops(name), rel=0.03
    )
