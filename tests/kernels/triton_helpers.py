"""What the Triton kernel tests share: the interpreted CPU run, relative errors, gradients.

Without CUDA the Triton kernels run under ``TRITON_INTERPRET=1``, which Triton reads when its own
library and our kernels are decorated, i.e. before ``triton`` is first imported. So on a CPU
machine each test file's tiny cases run in a subprocess started with that variable
(:func:`run_interpreted`, from the file's ``test_interpreted``); in the parent session they are
skipped, and the rest of the session never sees the variable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

CUDA = torch.cuda.is_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if CUDA else "cpu"

# A tiny case runs compiled on CUDA, interpreted in the subprocess, and is skipped otherwise.
tiny = pytest.mark.skipif(not (CUDA or INTERPRETED), reason="runs in test_interpreted's subprocess")
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def run_interpreted(test_file: str) -> None:
    """Run ``test_file``'s CPU cases under the Triton interpreter in a fresh process."""
    if CUDA or INTERPRETED:
        pytest.skip("the cases run directly here")
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", test_file, "-q", "-x", "-p", "no:cacheprovider", "-s"]
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (
        f"interpreted cases failed:\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
    )


def offsets_limit(monkeypatch: pytest.MonkeyPatch, elements: int) -> None:
    """Lower the kernels' 32-bit offset limit (``check_offsets``) to ``elements``, so that tiny
    inputs exceed it (the real limit is tested on meta tensors in test_triton_support.py)."""
    from mambaverse.kernels import triton_support

    monkeypatch.setattr(triton_support, "MAX_SPAN", elements)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; NaN anywhere makes it infinite."""
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def grads(
    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    inputs: Sequence[torch.Tensor | None],
    weights: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """Gradients of Σ weights_i · outputs_i with respect to every input that requires one."""
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((o.double() * w.double()).sum() for o, w in zip(outs, weights))
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    return list(torch.autograd.grad(loss, wanted))


def leaves(
    tensors: dict[str, torch.Tensor | None],
    dtype: torch.dtype,
    params: Sequence[str] = (),
    float64: bool = False,
) -> dict[str, torch.Tensor | None]:
    """Fresh leaves that require gradients: activations in ``dtype``, ``params`` in fp32.

    With ``float64`` the same rounded values are upcast, for the reference.
    """
    out = {}
    for k, t in tensors.items():
        if t is not None:
            t = t.detach().to(torch.float32 if k in params else dtype)
            t = (t.double() if float64 else t).requires_grad_()
        out[k] = t
    return out


def report(label: str, errors: dict[str, float], tol: float) -> None:
    """Print the relative errors (the GPU run's log records them) and check each."""
    line = "  ".join(f"{k}={v:.2e}" for k, v in errors.items())
    print(f"[rel err] {label}: {line}  (tol {tol:.0e})")
    if os.environ.get("MAMBAVERSE_TEST_LOG"):  # the device run collects them in one file
        with open(os.environ["MAMBAVERSE_TEST_LOG"], "a") as log:
            log.write(f"{label}: {line}  (tol {tol:.0e})\n")
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"{label}: relative error above {tol:.0e}: {bad}"
