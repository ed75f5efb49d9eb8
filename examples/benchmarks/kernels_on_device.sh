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
OPS=${OPS:-selective_scan,ssd_scan,attention}  # ops to test and bench
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

# 1. Compile in parallel beside the GPU tests (Triton's on-disk cache is shared): the tuning
#    jobs, or, for the benchmark alone, the SSD peer's autotuning (the longest compile).
parts=$TUNE_PARTS
has tune || parts=ssd
if has tune || { has bench && [[ $OPS == *ssd_scan* ]]; }; then
  for i in $(seq 0 $((WORKERS - 1))); do
    timeout 270 python3 examples/benchmarks/tune_kernels.py --compile-only --parts "$parts" --worker "$i" --workers "$WORKERS" \
      >"/tmp/compile_$i.log" 2>&1 &
  done
fi
if has test; then
  tests=$(for op in ${OPS//,/ }; do echo "tests/kernels/test_triton_$op.py"; done)
  # shellcheck disable=SC2086
  timeout 270 python3 -m pytest -m gpu $tests -n 6 -q -s -p no:cacheprovider -rf >"$OUT/pytest_gpu.log" 2>&1
  echo "pytest -m gpu: exit $?"; grep -E "passed|failed" "$OUT/pytest_gpu.log" | tail -3
fi
wait
# 2. Time, alone on the GPU.
if has tune; then
  cat /tmp/compile_*.log | grep -A3 FAILED >"$OUT/tune.log"  # compile failures first
  timeout 200 python3 examples/benchmarks/tune_kernels.py --parts "$TUNE_PARTS" --out "$OUT" >>"$OUT/tune.log" 2>&1
  echo "tune: exit $?"
fi
if has bench; then
  timeout 240 python3 -m mambaverse bench kernels --ops "$OPS" --out "$OUT" >"$OUT/bench.log" 2>&1
  echo "bench: exit $?"; tail -40 "$OUT/bench.log"
fi
