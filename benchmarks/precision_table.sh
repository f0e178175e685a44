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
# OUT/exports.txt); LiteRT int8, refused by default after this table, is exported with --accept-int8-loss. A format
# whose tools are not installed is said and skipped.
set -u
STUDENT=${1:?usage: precision_table.sh STUDENT OUT [WORK]}
OUT=${2:?usage: precision_table.sh STUDENT OUT [WORK]}
WORK=${3:-runs/precision}
MC=${MOBILECLIP:-.venv/bin/mobileclip}
mkdir -p "$WORK" "$OUT"
# Held-out images for evaluation (val split, a seed neither the students nor the demo's checks used: 20 per class)
# and training-split images for calibration.
$MC synth --out "$WORK/eval" --n 720 --split val --seed 7 >/dev/null
$MC synth --out "$WORK/calib" --n 64 --split train --seed 2 >/dev/null
CALIB=(--calib "$WORK/calib")
JOBS=(
  "onnx-fp32|onnx|fp32|"
  "onnx-fp16|onnx|fp16|"
  "onnx-int8-static|onnx|int8|--quant static ${CALIB[*]}"
  "onnx-int8-dynamic|onnx|int8|--quant dynamic"
  "ort-int8-static|ort|int8|--quant static ${CALIB[*]}"
  "litert-fp32|litert|fp32|"
  "litert-fp16|litert|fp16|"
  "litert-int8-dynamic|litert|int8|--quant dynamic --accept-int8-loss"
  "litert-int8-static|litert|int8|--quant static ${CALIB[*]} --accept-int8-loss"
  "executorch-fp32|executorch|fp32|"
  "executorch-int8-static|executorch|int8|${CALIB[*]}"
  "coreml-fp16|coreml|fp16|"
  "coreml-palettize8|coreml|fp16|--compress palettize8"
)
: > "$OUT/exports.txt"
BUNDLES=()
for job in "${JOBS[@]}"; do
  IFS='|' read -r name fmt precision extra <<< "$job"
  echo "== export $name"
  # shellcheck disable=SC2086  # extra holds several arguments
  if $MC export "$STUDENT" --format "$fmt" --precision "$precision" $extra --out "$WORK/$name" --overwrite \
       --max-batch 8 --data "$WORK/eval" --allow-mismatch > "$WORK/$name.log" 2>&1; then
    BUNDLES+=("$WORK/$name")
    echo "$name: $(grep -E '^wrote|^--allow-mismatch' "$WORK/$name.log" | tr '\n' ' ')" | tee -a "$OUT/exports.txt"
  else
    echo "$name: not exported: $(tail -n 1 "$WORK/$name.log")" | tee -a "$OUT/exports.txt"
  fi
done
echo "== bench --eval (${#BUNDLES[@]} bundles)"
$MC bench "${BUNDLES[@]}" --model "$STUDENT" --eval "$WORK/eval" --batch 1 --threads 2 --out "$OUT"
