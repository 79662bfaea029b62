#!/usr/bin/env bash
# The paper's protocol, larger, on one GPU (target: under 8 minutes on an H100/H200).
#
#   bash benchmarks/gpu_protocol.sh            # from the repository root
#
# Phantom caches at 128 px (CT and MR), methods scratch / contrastive (MoCo v2) /
# multitask, label budgets 1,2,4, 2 seeds, bf16; settings CT->CT and CT->MR (the CT
# pre-trainings are shared), and MR->MR when MR_TOO=1. Results land in
# $OUT/protocol/<setting>/results.{json,md} and dice_vs_labels.png.
# Sizes are environment variables: PRETRAIN_STEPS, FINETUNE_STEPS, SEEDS, SUBJECTS, SIZE.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/out}/protocol
PRETRAIN_STEPS=${PRETRAIN_STEPS:-1000}
FINETUNE_STEPS=${FINETUNE_STEPS:-300}
SEEDS=${SEEDS:-2}
SUBJECTS=${SUBJECTS:-24}
SIZE=${SIZE:-128}
mkdir -p "$OUT"
$PY -c "import ssmtl, torch; assert torch.cuda.is_available(), 'no CUDA device'; print('ssmtl', ssmtl.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"

t0=$(date +%s)
for domain in ct mr; do
  $PY -m ssmtl cache build --dataset phantom --out "$OUT/$domain.h5" --subjects "$SUBJECTS" --domain "$domain" \
      --size "$SIZE" --set num_slices=48 --force > /dev/null
done
echo "caches: $(( $(date +%s) - t0 ))s"

COMMON=(--methods scratch,contrastive,multitask --labeled-volumes 1,2,4 --seeds "$SEEDS"
        --pretrain-steps "$PRETRAIN_STEPS" --finetune-steps "$FINETUNE_STEPS" --finetune-batch-size 32
        --set train.mixed_precision=bf16 --set train.batch_size=32 --set data.num_workers=6
        --set train.checkpoint_every=100000)

bench() {  # name, pretrain cache, finetune cache
  local t=$(date +%s)
  $PY -m ssmtl benchmark --data "$OUT/$2.h5" --finetune-data "$OUT/$3.h5" --out "$OUT/$1" "${COMMON[@]}"
  echo "$1: $(( $(date +%s) - t ))s"
}

bench ct-ct ct ct
mkdir -p "$OUT/ct-mr" && rm -rf "$OUT/ct-mr/pretrain" && cp -r "$OUT/ct-ct/pretrain" "$OUT/ct-mr/pretrain"  # same CT pre-training
bench ct-mr ct mr
if [ "${MR_TOO:-0}" = 1 ]; then bench mr-mr mr mr; fi
echo "total: $(( $(date +%s) - t0 ))s"
