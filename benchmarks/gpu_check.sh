#!/usr/bin/env bash
# One script that proves the GPU paths on one CUDA GPU, sized to finish in under 8 minutes:
#
#   1. the `gpu`- and `tensorrt`-marked tests (bf16 training, compiled-vs-eager bf16 gradients,
#      TensorRT export and parity where tensorrt imports);
#   2. distill_throughput for mobileclip-s0 at batch 256 in bf16, eager and torch.compile
#      (samples/s, MFU against the GPU's peak);
#   3. a 200-step distillation of mobileclip-s0 from a teacher cache, checking the loss goes down;
#   4. `mobileclip bench` of the S0 towers on PyTorch CUDA (fp32, bf16), ONNX Runtime's CUDA
#      provider and TensorRT where they are installed, at batch 1, 8 and 64;
#   5. the data pipeline with JPEG decoding on the GPU (data.decoder=device: nvJPEG) against the best
#      CPU decoding, samples/s per core of the loader and the GPU's decode time per sample.
#
# Usage (repository root):  bash benchmarks/gpu_check.sh [OUT_DIR]      (default: gpu_check_out/)
#   PYTHON=...  the interpreter (default: .venv/bin/python if present, else python3).
#   Wheels in .whl/ (the device tool's way to carry packages) are installed to /tmp/site first;
#   `make gpu-wheels` downloads the small ones this needs (open_clip_torch, ftfy, webdataset, ...).
#   The project itself is installed (editable, without dependencies) when it does not import, so
#   the machine's own torch is the one measured.
#
# Writes into OUT_DIR at most 8 files (summary.md, gpu_check.log, the JSON results); copy them to
# benchmarks/results/gpu/. Each step has its own time limit; a failed step is recorded and the next
# one runs. Without a CUDA GPU it says so, measures nothing and exits 0.
set -uo pipefail

OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.md"
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
: > "$LOG"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1

log() { echo "gpu_check: $*" | tee -a "$LOG"; }
START=$(date +%s)
STATUS=()

# step NAME SECONDS COMMAND...: run with a time limit, log its output, record ok/failed/timed out.
step() {
    local name=$1 limit=$2; shift 2
    local t0=$(date +%s) rc
    log "--- $name (limit ${limit}s): $*"
    timeout "$limit" "$@" >> "$LOG" 2>&1
    rc=$?
    local dt=$(( $(date +%s) - t0 ))
    if [ $rc -eq 0 ]; then STATUS+=("| $name | ok | ${dt} s |");
    elif [ $rc -eq 124 ]; then STATUS+=("| $name | timed out after ${limit} s | ${dt} s |");
    else STATUS+=("| $name | failed (exit $rc, see gpu_check.log) | ${dt} s |"); fi
    log "--- $name: exit $rc after ${dt}s"
    return $rc
}

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>> "$LOG"; then
    MSG="no CUDA GPU is present (torch.cuda.is_available() is False on $(hostname)): nothing was measured"
    log "$MSG"
    printf '# GPU check\n\n%s.\n' "$MSG" > "$SUMMARY"
    rm -rf "$WORK"
    exit 0
fi

# --- set-up: carried wheels, then the project (no dependencies: the machine's torch stays)
if ls .whl/*.whl > /dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >> "$LOG" 2>&1 && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# An editable install: export/, distill/ and benchmarks/ are mapped to mobileclip.* by its import hook,
# which also works from the repository root (where the source folder mobileclip/ comes first on sys.path).
if ! "$PYTHON" -c "import mobileclip.distill, mobileclip.benchmarks" > /dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-cache-dir -e . >> "$LOG" 2>&1 \
        || { log "could not install the project (see $LOG)"; exit 1; }
fi

"$PYTHON" - >> "$LOG" 2>&1 <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for mod in ("onnxruntime", "tensorrt", "open_clip", "timm"):
    try:
        m = __import__(mod)
        extra = f" providers={m.get_available_providers()}" if mod == "onnxruntime" else ""
        print(mod, m.__version__, extra)
    except Exception as e:  # noqa: BLE001 - a report, not a control path
        print(mod, "not importable:", type(e).__name__, e)
EOF

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$LOG" 2>&1 || true

# 1. the GPU-marked tests (the suite's addopts deselect only `slow`; -m replaces that)
step "pytest -m 'gpu or tensorrt'" 150 "$PYTHON" -m pytest -q -p no:cacheprovider -m "gpu or tensorrt" \
    --continue-on-collection-errors -o addopts="" tests/

# 2. training throughput of S0 in bf16, eager then compiled (no teachers: the student's own step; MFU)
step "distill_throughput bf16 eager" 100 "$PYTHON" -m mobileclip.benchmarks.distill_throughput \
    --student mobileclip-s0 --batch 256 --precision bf16 --steps 5 --workers 8 --teachers --out "$WORK/dt_eager"
cp "$WORK/dt_eager/distill_throughput.json" "$OUT/distill_throughput_bf16.json" 2>/dev/null
step "distill_throughput bf16 compile" 150 "$PYTHON" -m mobileclip.benchmarks.distill_throughput \
    --student mobileclip-s0 --batch 256 --precision bf16 --compile --steps 5 --workers 8 --teachers \
    --out "$WORK/dt_compile"
cp "$WORK/dt_compile/distill_throughput.json" "$OUT/distill_throughput_bf16_compile.json" 2>/dev/null

# 3. 200 steps of distillation from a cache (random-weight ViT-B-32 teacher: speed and loss only)
step "cache-teacher" 90 "$PYTHON" -m mobileclip cache-teacher --teacher open_clip:ViT-B-32 --data synthetic \
    --size 4096 --image-size 64 --augs 2 --batch-size 256 --workers 8 --out "$WORK/cache"
step "distill 200 steps" 150 "$PYTHON" -m mobileclip distill student=mobileclip-s0 "data.cache=$WORK/cache" \
    steps=200 batch_size=256 data.workers=12 losses.kd=1.0 losses.clip=1.0 log_every=5 ckpt_every=1000 \
    eval.size=256 progress=false "out=$WORK/distill"
step "loss goes down" 30 "$PYTHON" - "$WORK/distill" "$OUT/distill_200_steps.json" <<'EOF'
import json, sys
rows = [json.loads(x) for x in open(f"{sys.argv[1]}/metrics.jsonl")]
first = sum(r["loss"] for r in rows[:5]) / 5
last = sum(r["loss"] for r in rows[-5:]) / 5
sps = [r["samples_per_s"] for r in rows[2:]]
out = {"steps": rows[-1]["step"], "loss_first5": first, "loss_last5": last, "bad_steps": rows[-1]["bad_steps"],
       "samples_per_s_median": sorted(sps)[len(sps) // 2], "data_wait_s_total": sum(r["data_wait_s"] for r in rows),
       "summary": json.load(open(f"{sys.argv[1]}/summary.json"))}
json.dump(out, open(sys.argv[2], "w"), indent=2)
print(json.dumps({k: v for k, v in out.items() if k != "summary"}))
sys.exit(0 if last < first and rows[-1]["bad_steps"] == 0 else 1)
EOF

# 4. latency of the S0 towers: PyTorch CUDA, and ONNX Runtime CUDA / TensorRT where installed
RUNTIMES=$("$PYTHON" - <<'EOF'
from importlib.util import find_spec
r = ["torch"]
if find_spec("onnxruntime"):
    import onnxruntime
    r += ["onnxruntime"] if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else []
r += ["tensorrt"] if find_spec("tensorrt") else []   # bench says why when it is installed but unusable
print(",".join(r))
EOF
)
log "runtimes with CUDA here: $RUNTIMES (ONNX Runtime needs onnxruntime-gpu; TensorRT the tensorrt package)"
EXPORT=()
[ "$RUNTIMES" != "torch" ] && EXPORT=(--export fp32,fp16)
step "bench S0 towers" 180 "$PYTHON" -m mobileclip bench --model mobileclip-s0 --device cuda --batch 1,8,64 \
    --runtime "$RUNTIMES" --torch-precision fp32,bf16 "${EXPORT[@]}" --min-seconds 0.3 --out "$WORK/bench"
cp "$WORK/bench/bench.json" "$OUT/bench.json" 2>/dev/null
cp "$WORK/bench/bench.md" "$OUT/bench.md" 2>/dev/null

# 5. JPEG decoding on the GPU: the loader's CPU side, and nvJPEG's decode + crop + resize per sample
step "data_throughput, decoding on the GPU" 90 "$PYTHON" -m mobileclip.benchmarks.data_throughput \
    --images 256 --samples 512 --batch 128 --rounds 1 --workers 0 2 --levers 7 10 --draft-size 0 0 \
    --pretokenize-captions 10000 --device cuda --out "$WORK/data"
cp "$WORK/data/data_throughput.json" "$OUT/data_throughput_gpu.json" 2>/dev/null

{
    echo "# GPU check"
    echo
    echo "\`bash benchmarks/gpu_check.sh\` on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1),"
    echo "$(date -u +%Y-%m-%d), $(( $(date +%s) - START )) s in all. Runtimes with CUDA: $RUNTIMES."
    echo
    echo "| step | result | time |"
    echo "|---|---|---:|"
    printf '%s\n' "${STATUS[@]}"
    for f in "$WORK/dt_eager/distill_throughput.md" "$WORK/dt_compile/distill_throughput.md"; do
        [ -f "$f" ] && { echo; sed 's/^# /## /' "$f"; }
    done
    [ -f "$OUT/distill_200_steps.json" ] && { echo; echo "## 200-step distillation"; echo; echo '```';
        grep -v '"summary"' "$OUT/distill_200_steps.json" | head -8; echo '```'; }
    [ -f "$WORK/data/data_throughput.md" ] && { echo; sed 's/^# /## /' "$WORK/data/data_throughput.md"; }
} > "$SUMMARY"
cat "$SUMMARY" | tee -a "$LOG"
rm -rf "$WORK"
