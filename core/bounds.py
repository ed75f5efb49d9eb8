"""Value ranges of builder parameters, declared in their signatures.

A model's or mixer's builder hints a parameter with one of these instead of a bare ``int`` or
``float``; :func:`mambaverse.build_backbone` and :func:`mambaverse.create_mixer` check the value
before anything is built, so ``depth=-1`` is refused by name instead of building a model without
blocks, and ``embed_dim=0`` instead of failing deep inside torch. Plugins may use them too, or
any ``Annotated[int, annotated_types.Ge(...)]`` of their own: the check reads the
``annotated_types`` bounds (``Gt``, ``Ge``, ``Lt``, ``Le``, ``Interval``).
"""

from __future__ import annotations

import operator
from typing import Annotated, Any

from annotated_types import Ge, GroupedMetadata, Gt, Interval

Positive = Annotated[int, Ge(1)]  # widths, depths, heads, channels, kernel sizes
NonNegative = Annotated[int, Ge(0)]  # counts where 0 means "none" (num_classes=0: features)
PositiveFloat = Annotated[float, Gt(0)]  # expansion ratios, epsilons
NonNegativeFloat = Annotated[float, Ge(0)]  # ratios where 0 leaves a part out (mlp_ratio=0)
Rate = Annotated[float, Interval(ge=0, lt=1)]  # dropout and drop-path probabilities

_CHECKS = (("gt", operator.gt, ">"), ("ge", operator.ge, ">="), ("lt", operator.lt, "<"),
           ("le", operator.le, "<="))  # fmt: skip


def out_of_bounds(metadata: tuple[Any, ...], value: Any) -> str | None:
    """The first bound in ``metadata`` (an ``Annotated`` hint's extras) that ``value`` breaks,
    as text (``">= 1"``); None if it keeps them all or they are not bounds."""
    for item in metadata:
        parts = item if isinstance(item, GroupedMetadata) else (item,)
        for part in parts:
            for attribute, holds, symbol in _CHECKS:
                bound = getattr(part, attribute, None)
                if bound is not None and not holds(value, bound):
                    return f"{symbol} {bound}"
    return None
