"""examples/benchmarks/vlm_generation.py (the GPU measurement) runs end to end on the CPU."""

from __future__ import annotations

import runpy
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples/benchmarks/vlm_generation.py"


def test_the_generation_benchmark_runs_and_compares_both_models(tmp_path):
    script = runpy.run_path(str(SCRIPT))
    argv = ["--smoke", "--contexts", "8,40", "--new-tokens", "2", "--out", str(tmp_path)]
    result = script["main"](argv)
    rows = {(r["model"].split(" ")[0], r["context"]): r for r in result["rows"]}
    assert set(rows) == {("cobra_tiny", 8), ("cobra_tiny", 40), ("same", 8), ("same", 40)}
    assert all(r["status"] == "ok" for r in rows.values())
    # Mamba's decoding state does not grow with the context; the Transformer's KV cache does.
    assert rows["cobra_tiny", 8]["state_bytes"] == rows["cobra_tiny", 40]["state_bytes"]
    assert rows["same", 8]["state_bytes"] < rows["same", 40]["state_bytes"]
    assert [(p["context"], p["batch"]) for p in result["ratios"]] == [(8, 1), (40, 1)]
    assert (tmp_path / "vlm_generation.json").is_file()
