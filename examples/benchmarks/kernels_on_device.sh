#!/usr/bin/env bash
# One device call: install, check every Triton kernel on the GPU, compile in parallel, time.
# Usage (repository root, on the GPU machine): OUT=dir STAGES="test tune bench" bash this-file
# Stages: test (pytest -m gpu), tune (examples/benchmarks/tune_kernels.py), bench
# (mambaverse bench kernels). Logs go to $OUT; every stage has its own time limit.
set -u
OUT=${OUT:-runs/device}
STAGES=${STAGES:-"test tune bench"}
WORKERS=${WORKERS:-12}
TUNE_PARTS=${TUNE_PARTS:-ss,ssd,attn}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache}
export MAMBAVERSE_TEST_LOG="$OUT/rel_err.log"  # the GPU tests append their relative errors
has() { [[ " $STAGES " == *" $1 "* ]]; }

# Packages the image lacks (pydantic, pluggy) travel as wheels in .whl (device README).
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$OUT/setup.log" 2>&1 && export PYTHONPATH=/tmp/site
fi
python3 -m pip install --no-deps --no-build-isolation -e . -q >>"$OUT/setup.log" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/setup.log"

# Compile in parallel first: the tuning jobs (Triton's cache is shared) beside the GPU tests.
if has tune; then
  for i in $(seq 0 $((WORKERS - 1))); do
    timeout 270 python3 examples/benchmarks/tune_kernels.py --compile-only --parts "$TUNE_PARTS" --worker "$i" --workers "$WORKERS" \
      >"/tmp/compile_$i.log" 2>&1 &
  done
fi
if has test; then
  timeout 270 python3 -m pytest -m gpu tests/kernels/test_triton_selective_scan.py \
    tests/kernels/test_triton_ssd_scan.py tests/kernels/test_triton_attention.py \
    -n 6 -q -s -p no:cacheprovider -rf >"$OUT/pytest_gpu.log" 2>&1
  echo "pytest -m gpu: exit $?"; grep -E "passed|failed" "$OUT/pytest_gpu.log" | tail -3
fi
wait
if has tune; then
  cat /tmp/compile_*.log | grep -A3 FAILED >"$OUT/tune.log"  # compile failures first
  timeout 200 python3 examples/benchmarks/tune_kernels.py --parts "$TUNE_PARTS" --out "$OUT" >>"$OUT/tune.log" 2>&1
  echo "tune: exit $?"
fi
if has bench; then
  timeout 200 python3 -m mambaverse bench kernels --out "$OUT" >"$OUT/bench.log" 2>&1
  echo "bench: exit $?"; tail -70 "$OUT/bench.log"
fi
