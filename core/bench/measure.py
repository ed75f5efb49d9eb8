"""Timing and memory of one benchmark point, the way docs/benchmarks.md reports them.

- Time: warm-up calls first (compilation, autotuning and allocator growth stay out of the
  numbers), then ``repeats`` timed calls; the median is reported. On CUDA each call is timed
  with device events (the work is asynchronous); on the CPU with a monotonic clock.
- Back to back (``back_to_back=True``): also ``repeats`` calls issued without waiting for each
  other, one pair of events around them all, the mean per call. The synchronized median counts
  every moment the device waits for the host to launch a call's first kernels and to keep up
  with short ones; a training loop that does not wait for each step (no ``loss.item()`` per
  step) overlaps the host's work for the next call with the device's for this one, so its
  throughput is this figure: the larger of the host's and the device's time per call.
- Memory: the peak of ``torch.cuda.max_memory_allocated`` over the timed calls, after
  ``reset_peak_memory_stats``: what the tensors needed, weights included, not the allocator's
  cache. The CPU has no such counter, so there it is ``None``.
- Out of memory is a result, not a crash: the point is marked ``"OOM"`` and the caches freed so
  that the next point can run. Any other exception marks the point ``"error: ..."`` the same
  way (a kernel that refuses a shape must not end a whole GPU run).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

OK, OOM, SKIPPED = "ok", "OOM", "skipped"


@dataclass
class Measurement:
    """One point: median milliseconds per call, peak device bytes, and what happened."""

    ms: float | None = None
    peak_bytes: int | None = None
    status: str = OK
    back_to_back_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window (frees cached blocks first, so the peak is this window's)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def time_calls(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``fn``, measured on the device's clock."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start_s = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start_s) * 1e3)
    return times


def time_back_to_back(fn: Callable[[], Any], device: torch.device, calls: int) -> float:
    """Milliseconds per call of ``calls`` calls of ``fn`` issued back to back (one wait, at the
    end): the steady-state rate of a loop that does not synchronize between calls."""
    synchronize(device)  # the host starts with no lead over the device

    def all_calls() -> None:
        for _ in range(calls):
            fn()

    (total,) = time_calls(all_calls, device, 1)
    return total / calls


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def failure(err: BaseException) -> str:
    """A point's status for an exception: "OOM", or "error: <type>: <first line>" (printed in
    full to stderr, so the log keeps what the table shortens)."""
    if is_out_of_memory(err):
        return OOM
    message = (
        f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    )
    print(f"  error: {message}", file=sys.stderr, flush=True)
    return f"error: {message[:60]}"


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(
    fn: Callable[[], Any],
    device: torch.device,
    warmup: int = 2,
    repeats: int = 5,
    back_to_back: bool = False,
) -> Measurement:
    """Median time and peak memory of ``fn()``, with ``back_to_back`` also the time per call of
    calls issued without waiting (see the module docstring); OOM is reported."""
    try:
        for _ in range(warmup):
            fn()
        reset_peak(device)
        times = time_calls(fn, device, repeats)
        unsynchronized = time_back_to_back(fn, device, repeats) if back_to_back else None
        return Measurement(
            statistics.median(times), peak_bytes(device), back_to_back_ms=unsynchronized
        )
    except Exception as err:  # one failing point must not end the suite
        status = failure(err)
    free_memory(device)  # outside the except block: the traceback no longer holds the tensors
    return Measurement(status=status)


def graphed(fn: Callable[[], Any], warmup: int = 3) -> Callable[[], None]:
    """``fn`` captured in one CUDA graph; returns the graph's replay.

    As torch's whole-network capture does: ``warmup`` calls on a side stream first (lazy
    initialisation, compilation and the allocator's first blocks stay out of the capture), then
    one call captured. The graph keeps ``fn``'s tensors: its inputs must stay where they are,
    and every replay overwrites its outputs (a training step's gradients). Raises what breaks a
    capture, such as a host synchronisation inside ``fn``.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


class Deadline:
    """A wall-clock budget for a suite: points after it are skipped (and marked so), which keeps
    a GPU run inside its time limit whatever the machine's speed. None = no limit."""

    def __init__(self, seconds: float | None) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds

    def passed(self) -> bool:
        return self.end is not None and time.monotonic() > self.end
