#!/usr/bin/env bash
# Every `mambaverse bench` suite on one GPU, at the sizes of issue 9, in under 9 minutes (H100).
#
# Usage, from the repository root on the GPU machine:
#     OUT=/some/dir bash examples/benchmarks/run_gpu_suite.sh
# Writes $OUT/<suite>.json, $OUT/<suite>.png and $OUT/<suite>.log for kernels, scaling, vision,
# generation and synthetic, then prints a summary table. Each suite runs in its own process with
# its own hard time limit (`timeout`) and a softer --time-budget (points left when it has passed
# are marked "skipped"), so one failing or slow suite never stops the others. Suites save their
# JSON as they go: a suite stopped by its limit keeps what it measured.
#
# Packages the GPU image lacks (pydantic, pluggy, open_clip_torch, ftfy, wcwidth) are installed
# from wheels in .whl/ when that folder is there (carry it with the call).
set -u
OUT=${OUT:-runs/gpu_suite}
SUITES=${SUITES:-"kernels scaling vision generation synthetic"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache}
START=$(date +%s)

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >"$OUT/setup.log" 2>&1 && export PYTHONPATH=/tmp/site
fi
python3 -m pip install --no-deps --no-build-isolation -e . -q >>"$OUT/setup.log" 2>&1
python3 -c "import torch, mambaverse; print('torch', torch.__version__, torch.cuda.get_device_name())" \
  | tee -a "$OUT/setup.log"

# suite -> hard limit (s) and options; each --time-budget leaves room for the point under way.
# (kernels --quick did not finish in 60 s in the second session; generation now also captures
# graphs for both language models; the sum stays under one device call's 10 minutes.)
declare -A LIMIT=([kernels]=100 [scaling]=150 [vision]=60 [generation]=110 [synthetic]=90)
declare -A OPTIONS=(
  [kernels]="--quick"
  [scaling]="--size 130m --models mamba,transformer,mamba2,hybrid --lengths 1024,2048,4096,8192,16384,32768,65536
             --tokens-per-batch 16384 --contexts 1024,4096,16384,65536 --gen-batches 1,64 --gen-tokens 16
             --warmup 1 --repeats 3 --time-budget 120"
  [vision]="--pairs vim_tiny=deit_tiny_patch16_224,vim_small=deit_small_patch16_224
            --resolutions 224,512,1024,1248 --batch 16 --warmup 1 --repeats 3 --time-budget 40"
  [generation]="--preset cobra_3b --batches 1,8 --prompt-tokens 32 --new-tokens 32
                --warmup 1 --repeats 3 --time-budget 80"
  [synthetic]="--tasks induction_heads --models mamba,transformer --train-length 256 --factors 1,2,4,16,64
               --batch 8 --train-seconds mamba=45,transformer=20 --eval-samples 256 --eval-tokens 1048576
               --time-budget 75"
)

declare -A STATUS
for suite in $SUITES; do
  echo "== $suite (limit ${LIMIT[$suite]} s) $(date +%T)"
  # shellcheck disable=SC2086  # the options are meant to split into words
  timeout "${LIMIT[$suite]}" python3 -m mambaverse bench "$suite" --out "$OUT" ${OPTIONS[$suite]} \
    >"$OUT/$suite.log" 2>&1
  code=$?
  case $code in
    0) STATUS[$suite]="ok" ;;
    124) STATUS[$suite]="stopped at its ${LIMIT[$suite]} s limit" ;;
    *) STATUS[$suite]="failed (exit $code): $(grep -v '^\s*$' "$OUT/$suite.log" | tail -1 | cut -c1-120)" ;;
  esac
  echo "   ${STATUS[$suite]}"
done

echo
echo "== summary ($(($(date +%s) - START)) s in all; full tables in $OUT/<suite>.log)"
for suite in $SUITES; do printf '%-11s %s\n' "$suite" "${STATUS[$suite]}"; done
python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])


def load(suite):
    path = out / f"{suite}.json"
    return json.loads(path.read_text()) if path.exists() else None


def num(value, unit=""):
    if value is None:
        return "-"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"


def point(row, key, scale=1.0, unit=""):
    return num(row[key] * scale, unit) if row.get("status") == "ok" and row.get(key) is not None else row.get("status", "-")


scaling = load("scaling")
if scaling:
    print(f"\nscaling ({scaling['device']}): training tokens/s | peak GiB by length")
    for row in scaling["training"]:
        print(f"  {row['model']:<26} L={row['length']:<6} {point(row, 'tokens_per_s'):>9} | {point(row, 'peak_bytes', 2**-30)}")
    print("scaling: decode tokens/s | decoding state GiB by batch and context")
    for row in scaling["generation"]:
        print(f"  {row['model']:<26} B={row['batch']:<3} ctx={row['context']:<6} {point(row, 'decode_tokens_per_s'):>9} | {point(row, 'state_bytes', 2**-30)}")
vision = load("vision")
if vision:
    print(f"\nvision ({vision['device']}): Mamba model vs DeiT, same run")
    for r in vision.get("ratios", []):
        memory = f"{r['memory_ratio']:.2f}x the memory" if "memory_ratio" in r else ""
        print(f"  {r['pair']:<10} {r['resolution']:>5} px vs {r['against']:<24} {r['speedup']:.2f}x as fast, {memory}")
generation = load("generation")
if generation:
    print(f"\ngeneration ({generation['device']}): answer tokens/s | decode tokens/s | state")
    for r in generation["rows"]:
        print(f"  {r['model']:<42} B={r['batch']:<3} {point(r, 'answer_tokens_per_s'):>8} | {point(r, 'decode_tokens_per_s'):>8} | {point(r, 'state_bytes', 2**-20, ' MiB')}")
synthetic = load("synthetic")
if synthetic:
    print(f"\nsynthetic ({synthetic['device']}): accuracy by test length (trained at {synthetic['settings']['train_length']})")
    for r in synthetic["results"]:
        print(f"  {r['task']:<18} {r['model']:<14} {r['factor']:>3}x {point(r, 'accuracy')}")
EOF
