#!/usr/bin/env bash
# Issue 23's precision table: one trained student exported to every backend x precision the toolkit writes, each
# artifact timed (batch 1, 2 threads) and evaluated against the student's fp32 PyTorch source on held-out images by
# `mobileclip bench --eval` (zero-shot top-1, R@1 both ways, top-1 agreement), side by side in one run.
#
#   bash benchmarks/precision_table.sh STUDENT OUT [WORK]
#
# STUDENT: a checkpoint directory (make demo's: runs/demo/distilled/student); OUT: where bench writes bench.md/json;
# WORK (default runs/precision): the bundles, the calibration images and the evaluation folder. Every export runs
# with --allow-mismatch, so a recipe that misses parity is still measured (its miss is in its manifest and in
# OUT/exports.txt); every int8 job passes --accept-int8-loss, so a recipe refused by default is measured too. A format
# whose tools are not installed is said and skipped.
#
# Accuracy changes of a few points on 720 queries are within one draw's noise (a query more or less is 0.14 point),
# so the synthetic evaluation is drawn EVAL_SEEDS times (default 7 8 9; 720 held-out images each): the first draw's
# bench (latency and accuracy) goes to OUT/, each further one's (accuracy; short timing) to OUT/eval-SEED/.
# `python -m mobileclip.benchmarks.precision_summary` then gives each recipe's mean +- std over the draws.
# ONLY="job job ..." runs those jobs alone (e.g. ONLY="onnx-int8-static onnx-int8-static+exactgelu"); a name that is
# not a job is an error.
set -u
STUDENT=${1:?usage: precision_table.sh STUDENT OUT [WORK]}
OUT=${2:?usage: precision_table.sh STUDENT OUT [WORK]}
WORK=${3:-runs/precision}
MC=${MOBILECLIP:-.venv/bin/mobileclip}
# Held-out images for evaluation (val split, a seed neither the students nor the demo's checks used: 20 per class)
# and training-split images for calibration; EVAL_DIR and CALIB_DIR replace them (a real-data student: its test
# split as DIR/<class>/<image> + DIR/captions.csv, and images from its training split).
EVAL=${EVAL_DIR:-$WORK/eval}
CALIBD=${CALIB_DIR:-$WORK/calib}
read -r -a SEEDS <<< "${EVAL_SEEDS:-7 8 9}"
CALIB=(--calib "$CALIBD")
JOBS=(
  "onnx-fp32|onnx|fp32|"
  "onnx-fp16|onnx|fp16|"
  "onnx-int8-static|onnx|int8|--quant static ${CALIB[*]} --accept-int8-loss"
  "onnx-int8-static+exactgelu|onnx|int8|--quant static ${CALIB[*]} --exact-gelu --accept-int8-loss"
  "onnx-int8-dynamic|onnx|int8|--quant dynamic --accept-int8-loss"
  "ort-int8-static|ort|int8|--quant static ${CALIB[*]} --accept-int8-loss"
  "ort-int8-dynamic|ort|int8|--quant dynamic --accept-int8-loss"
  "litert-fp32|litert|fp32|"
  "litert-fp16|litert|fp16|"
  "litert-int8-dynamic|litert|int8|--quant dynamic --accept-int8-loss"
  "litert-int8-static|litert|int8|--quant static ${CALIB[*]} --accept-int8-loss"
  "executorch-fp32|executorch|fp32|"
  "executorch-int8-static|executorch|int8|--quant static ${CALIB[*]} --accept-int8-loss"
  "executorch-int8-dynamic|executorch|int8|--quant dynamic --accept-int8-loss"
  "coreml-fp16|coreml|fp16|"
  "coreml-palettize8|coreml|fp16|--compress palettize8"
)
for only in ${ONLY:-}; do   # before anything is written
  printf '%s\n' "${JOBS[@]}" | grep -q "^$only|" || { echo "precision_table.sh: ONLY names $only, which is not a job" >&2; exit 2; }
done
mkdir -p "$WORK" "$OUT"
[ -n "${EVAL_DIR:-}" ] || $MC synth --out "$EVAL" --n 720 --split val --seed "${SEEDS[0]}" >/dev/null
[ -n "${CALIB_DIR:-}" ] || $MC synth --out "$CALIBD" --n 64 --split train --seed 2 >/dev/null
: > "$OUT/exports.txt"
BUNDLES=()
for job in "${JOBS[@]}"; do
  IFS='|' read -r name fmt precision extra <<< "$job"
  [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $name "* ]] || continue
  echo "== export $name"
  # shellcheck disable=SC2086  # extra holds several arguments
  if $MC export "$STUDENT" --format "$fmt" --precision "$precision" $extra --out "$WORK/$name" --overwrite \
       --max-batch 8 --data "$EVAL" --allow-mismatch > "$WORK/$name.log" 2>&1; then
    BUNDLES+=("$WORK/$name")
    echo "$name: $(grep -E '^wrote|^--allow-mismatch' "$WORK/$name.log" | tr '\n' ' ')" | tee -a "$OUT/exports.txt"
  else
    echo "$name: not exported: $(tail -n 1 "$WORK/$name.log")" | tee -a "$OUT/exports.txt"
  fi
done
echo "== bench --eval (${#BUNDLES[@]} bundles)"
$MC bench "${BUNDLES[@]}" --model "$STUDENT" --eval "$EVAL" --batch 1 --threads 2 --out "$OUT"
[ -z "${EVAL_DIR:-}" ] || exit 0   # a given evaluation folder is one draw
for seed in "${SEEDS[@]:1}"; do
  echo "== bench --eval, draw $seed"
  $MC synth --out "$WORK/eval-$seed" --n 720 --split val --seed "$seed" >/dev/null
  $MC bench "${BUNDLES[@]}" --model "$STUDENT" --eval "$WORK/eval-$seed" --batch 1 --threads 2 --warmup 1 \
    --min-runs 3 --min-seconds 0.05 --out "$OUT/eval-$seed"
done
