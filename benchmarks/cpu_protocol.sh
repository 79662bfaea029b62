#!/usr/bin/env bash
# The protocol behind docs/benchmarks.md, sized for 2 CPU cores (about 45 minutes).
#
#   bash benchmarks/cpu_protocol.sh            # from the repository root, with .venv/bin on PATH
#
# Phantom caches (16 subjects, 64 px, 32 slices; 5 subjects held out for testing),
# U-Net base width 8, 600 pre-training steps per method, 400 fine-tuning steps per cell
# at a peak learning rate of 3e-3, label budgets 1 and 4, 2 seeds. Settings: CT->CT (plus an ablation in ablation/: the
# encoder tasks without the decoder tasks, and the multi-task encoder fine-tuned with a
# random decoder), CT->MR (the same CT pre-trainings), MR->MR, and multitask with learned
# (uncertainty) loss weights in weighting/.
set -euo pipefail
cd "$(dirname "$0")/.."
SSMTL=${SSMTL:-ssmtl}
OUT=${OUT:-benchmarks/out}/cpu
PRETRAIN_STEPS=${PRETRAIN_STEPS:-600}
FINETUNE_STEPS=${FINETUNE_STEPS:-400}
FINETUNE_LR=${FINETUNE_LR:-3e-3}
mkdir -p "$OUT"
for domain in ct mr; do
  [ -f "$OUT/$domain.h5" ] || $SSMTL cache build --dataset phantom --out "$OUT/$domain.h5" --subjects 16 --domain "$domain" --size 64 > /dev/null
done
COMMON=(--seeds 2 --pretrain-steps "$PRETRAIN_STEPS" --finetune-steps "$FINETUNE_STEPS" --finetune-lr "$FINETUNE_LR" --set model.base_channels=8)
t0=$(date +%s)
$SSMTL benchmark --data "$OUT/ct.h5" --out "$OUT/ct-ct" --methods scratch,contrastive,multitask --labeled-volumes 1,4 "${COMMON[@]}"
echo "ct-ct: $(( $(date +%s) - t0 ))s"
# ablation: the same encoder tasks without the decoder tasks. A copy of what is missing
# reuses the runs above and keeps the ablation's own pre-trainings and cells on a re-run
# (anything stale is detected by the benchmark and recomputed).
mkdir -p "$OUT/ablation" && cp -rn "$OUT/ct-ct/." "$OUT/ablation/"
$SSMTL benchmark --data "$OUT/ct.h5" --out "$OUT/ablation" \
    --methods scratch,contrastive,multitask,encoder-only=contrastive+order+position,multitask-encoder=multitask:encoder \
    --labeled-volumes 1 "${COMMON[@]}"
echo "ablation: $(( $(date +%s) - t0 ))s"
mkdir -p "$OUT/ct-mr" && rm -rf "$OUT/ct-mr/pretrain" && cp -r "$OUT/ct-ct/pretrain" "$OUT/ct-mr/pretrain"
$SSMTL benchmark --data "$OUT/ct.h5" --finetune-data "$OUT/mr.h5" --out "$OUT/ct-mr" --methods scratch,contrastive,multitask --labeled-volumes 1,4 "${COMMON[@]}"
echo "ct-mr: $(( $(date +%s) - t0 ))s"
$SSMTL benchmark --data "$OUT/mr.h5" --out "$OUT/mr-mr" --methods scratch,contrastive,multitask --labeled-volumes 1,4 "${COMMON[@]}"
echo "mr-mr: $(( $(date +%s) - t0 ))s"
# Investigation 1: learned loss weights (Kendall et al.) instead of equal weights, 1 labeled subject.
$SSMTL benchmark --data "$OUT/ct.h5" --out "$OUT/weighting" --methods multitask-uncertainty=multitask \
    --labeled-volumes 1 "${COMMON[@]}" --set weighting.scheme=uncertainty
echo "total: $(( $(date +%s) - t0 ))s"
