#!/usr/bin/env bash
# Every GPU check in one go, for a lent GPU machine with a time budget (~9 minutes):
# the CUDA/bf16/fp16 tests, benchmarks/gpu.sh (throughput and MFU) and a reduced
# benchmarks/gpu_protocol.sh. Heavy outputs go to $WORK; the summaries are copied to
# ${OUT:-benchmarks/out} (results.md/json per setting, gpu.json, the test log).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/ssmtl-gpu}
DEST=${OUT:-benchmarks/out}
mkdir -p "$WORK" "$DEST"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== CUDA tests"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_precision.py 2>&1 | tail -n 15 | tee "$DEST/cuda_tests.log"

echo "== gpu.sh"
OUT="$WORK" timeout "${GPU_BENCH_S:-270}" bash benchmarks/gpu.sh --deadline-s "${GPU_DEADLINE_S:-200}" > "$WORK/gpu.stdout" 2> "$WORK/gpu.stderr"
tail -n 5 "$WORK/gpu.stderr"
cp "$WORK/gpu.json" "$DEST/gpu.json" 2>/dev/null || cp "$WORK/gpu.stdout" "$DEST/gpu.json"

echo "== gpu_protocol.sh"
OUT="$WORK" PRETRAIN_STEPS=${PRETRAIN_STEPS:-600} FINETUNE_STEPS=${FINETUNE_STEPS:-200} SEEDS=${SEEDS:-2} \
    timeout "${PROTOCOL_S:-210}" bash benchmarks/gpu_protocol.sh 2>&1 | grep -v "^benchmark finetune" | tail -n 20
for setting in ct-ct ct-mr; do
  [ -f "$WORK/protocol/$setting/results.md" ] && cp "$WORK/protocol/$setting/results.md" "$DEST/protocol-$setting.md"
  [ -f "$WORK/protocol/$setting/results.json" ] && cp "$WORK/protocol/$setting/results.json" "$DEST/protocol-$setting.json"
done
ls -la "$DEST"
