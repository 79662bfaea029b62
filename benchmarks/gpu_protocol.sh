#!/usr/bin/env bash
# The paper's protocol on one GPU: label budgets 1, 2 and 8 volumes, 3 draws, fine-tuning and
# the frozen-encoder protocol, scratch vs MoCo v2 (contrastive) vs multitask.
#
#   bash benchmarks/gpu_protocol.sh                                   # phantom data
#   CACHES=benchmarks/out/real bash benchmarks/gpu_protocol.sh        # real MM-WHS (+ ACDC)
#
# CACHES is a folder with ct.h5 and mr.h5 (MM-WHS CT and MR, e.g. from
# benchmarks/real_caches.sh) and optionally acdc.h5; without it the script builds phantom
# caches (realistic variability, SUBJECTS subjects at SIZE px). Settings: CT->CT, CT->MR (the
# CT pre-trainings reused), MR->MR, and ACDC->ACDC when acdc.h5 exists. Results land in
# $OUT/protocol/<setting>/results.{json,md} and dice_vs_labels.png; the verdict of every
# setting (paired differences with 95 % t intervals over draws and the MDE) in $OUT/protocol/verdict.md.
# Every draw has its own pre-training run per method (docs/benchmarks.md); all settings keep
# their runs in $OUT/protocol/runs, so CT->MR reuses CT->CT's pre-trainings.
# Interrupted? Run it again: finished pre-trainings and cells are reused.
# Sizes are environment variables: PRETRAIN_STEPS, FINETUNE_STEPS, DRAWS, BUDGETS, SUBJECTS, SIZE.
# Budget 8 needs at least 8 labeled training subjects per cache (MM-WHS: 20 labeled per
# modality, 6 held out for testing).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/out}/protocol
PRETRAIN_STEPS=${PRETRAIN_STEPS:-5000}
FINETUNE_STEPS=${FINETUNE_STEPS:-auto}  # the user default: validate, keep the best step, stop on a plateau (at most 1000)
DRAWS=${DRAWS:-${SEEDS:-3}}
BUDGETS=${BUDGETS:-1,2,8}
SUBJECTS=${SUBJECTS:-24}
SIZE=${SIZE:-128}
mkdir -p "$OUT"
$PY -c "import ssmtl, torch; assert torch.cuda.is_available(), 'no CUDA device'; print('ssmtl', ssmtl.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"

t0=$(date +%s)
if [ -n "${CACHES:-}" ]; then
  DATA=$CACHES
  for f in ct mr; do [ -f "$DATA/$f.h5" ] || { echo "error: $DATA/$f.h5 not found (see benchmarks/real_caches.sh)" >&2; exit 2; }; done
else
  DATA=$OUT
  for domain in ct mr; do
    [ -f "$DATA/$domain.h5" ] || $PY -m ssmtl cache build --dataset phantom --out "$DATA/$domain.h5" --subjects "$SUBJECTS" \
        --domain "$domain" --size "$SIZE" --set num_slices=48 > /dev/null
  done
fi
echo "caches: $(( $(date +%s) - t0 ))s"

COMMON=(--methods scratch,contrastive,multitask --labeled-volumes "$BUDGETS" --draws "$DRAWS" --frozen-encoder
        --runs "$OUT/runs" --pretrain-steps "$PRETRAIN_STEPS" --steps "$FINETUNE_STEPS" --batch-size 32
        --set pretrain.train.mixed_precision=bf16 --set pretrain.train.batch_size=32 --set pretrain.data.num_workers=6
        --set pretrain.train.checkpoint_every=1000)

bench() {  # name, pretrain cache, finetune cache
  local t=$(date +%s)
  $PY -m ssmtl benchmark --data "$DATA/$2.h5" --finetune-data "$DATA/$3.h5" --out "$OUT/$1" "${COMMON[@]}"
  echo "$1: $(( $(date +%s) - t ))s"
}

bench ct-ct ct ct
bench ct-mr ct mr  # the same CT pre-trainings, from $OUT/runs
bench mr-mr mr mr
if [ -f "$DATA/acdc.h5" ]; then bench acdc acdc acdc; fi
$PY benchmarks/verdict.py "$OUT" | tee "$OUT/verdict.md"
echo "total: $(( $(date +%s) - t0 ))s"
