#!/usr/bin/env bash
# The protocol behind docs/benchmarks.md, sized for 2 idle CPU cores (estimate below).
#
#   bash benchmarks/cpu_protocol.sh            # from the repository root, with .venv/bin on PATH
#
# Interrupted? Run it again: every finished pre-training and cell is reused, an
# interrupted pre-training resumes from its checkpoint. At the end it prints the verdict
# (benchmarks/verdict.py) and writes it to $OUT/verdict.md, ready for docs/benchmarks.md.
#
# Data: phantom caches with realistic inter-subject variability (the default; 16 subjects,
# 64 px, about 32 slices, 5 subjects held out for testing), CT and MR.
# Model: U-Net base width 8, depth 4. Pre-training: PRETRAIN_STEPS per method (batch 16).
# Fine-tuning: FINETUNE_STEPS per cell at a peak learning rate of FINETUNE_LR (a fixed
# schedule), label budgets BUDGETS, SEEDS seeds; the frozen-encoder protocol (decoder +
# head trained on the fixed pre-trained encoder) beside fine-tuning. Every method is
# compared with scratch and with contrastive (MoCo v2) per (seed, test subject), with a
# 95 % bootstrap interval.
#
# Settings (each a folder of $OUT with results.json / results.md / dice_vs_labels.png):
#   ct-ct        pre-train and fine-tune on CT: scratch, contrastive, multitask
#   ablation     CT->CT, 1 labeled: the encoder tasks alone (encoder-only), the decoder
#                tasks alone (decoder-only), and the multitask pre-training fine-tuned
#                with a random decoder (multitask-encoder)
#   ct-ct-short  CT->CT, 1 labeled: contrastive and multitask pre-trained for a quarter of
#                the steps (does longer pre-training change the trend?)
#   ct-mr        pre-train on CT, fine-tune and test on MR (the CT pre-trainings reused)
#   mr-mr        pre-train and fine-tune on MR
#
# Time, estimated for 2 idle cores (2 cores of an Intel Xeon, torch 2.13.0+cpu, fp32) from
# the idle measurements of the previous protocol on this machine (fine-tuning cell of 400
# steps with its evaluation ~55 s; pre-training contrastive 0.075 s/step, multitask
# 0.21 s/step) and a timed small run of each pre-training (30 steps, CPU time per step:
# contrastive 0.074 s, encoder-only 0.22 s, decoder-only 0.14 s, multitask 0.28 s, so
# encoder-only ~0.16 s/step and decoder-only ~0.10 s/step at idle):
#   cells:          105 new cells: 69 fine-tuning x ~55 s + 36 frozen-encoder x ~45 s   ~ 87 min
#   pre-trainings:  CT contrastive + multitask + encoder-only + decoder-only (0.55 s/step),
#                   MR contrastive + multitask (0.29 s/step), two quarter-length ones
#                   (0.07 s/step): ~0.9 s x PRETRAIN_STEPS = 3000                      ~ 45 min
#   total:          about 2 h 15 min on 2 idle cores (the budget: 2 h 30 min). Shared
#                   cores stretch it in proportion to the load.
# A smoke run of the whole script: PRETRAIN_STEPS=20 FINETUNE_STEPS=20 SEEDS=2 OUT=/tmp/smoke.
set -euo pipefail
cd "$(dirname "$0")/.."
SSMTL=${SSMTL:-ssmtl}
PYTHON=${PYTHON:-python}
OUT=${OUT:-benchmarks/out}/cpu
PRETRAIN_STEPS=${PRETRAIN_STEPS:-3000}
SHORT_PRETRAIN_STEPS=${SHORT_PRETRAIN_STEPS:-$(( PRETRAIN_STEPS / 4 ))}
FINETUNE_STEPS=${FINETUNE_STEPS:-400}
FINETUNE_LR=${FINETUNE_LR:-3e-3}
SEEDS=${SEEDS:-3}
BUDGETS=${BUDGETS:-1,4}
mkdir -p "$OUT"
t0=$(date +%s)
for domain in ct mr; do
  [ -f "$OUT/$domain.h5" ] || $SSMTL cache build --dataset phantom --out "$OUT/$domain.h5" --subjects 16 --domain "$domain" --size 64 > /dev/null
done
FT=(--seeds "$SEEDS" --finetune-steps "$FINETUNE_STEPS" --finetune-lr "$FINETUNE_LR" --set model.base_channels=8)
COMMON=("${FT[@]}" --pretrain-steps "$PRETRAIN_STEPS")
METHODS=scratch,contrastive,multitask
elapsed() { echo "$1: $(( $(date +%s) - t0 ))s since start"; }

$SSMTL benchmark --data "$OUT/ct.h5" --out "$OUT/ct-ct" --methods "$METHODS" --labeled-volumes "$BUDGETS" --frozen-encoder "${COMMON[@]}"
elapsed ct-ct
# A copy of what is missing reuses the runs above and keeps a setting's own pre-trainings
# and cells on a re-run (anything stale is detected by the benchmark and recomputed).
mkdir -p "$OUT/ablation" && cp -rn "$OUT/ct-ct/." "$OUT/ablation/"
$SSMTL benchmark --data "$OUT/ct.h5" --out "$OUT/ablation" --labeled-volumes 1 "${COMMON[@]}" \
    --methods "$METHODS,encoder-only=contrastive+order+position,decoder-only=reconstruct+neighbor,multitask-encoder=multitask:encoder"
elapsed ablation
mkdir -p "$OUT/ct-ct-short" && cp -rn "$OUT/ct-ct/finetune" "$OUT/ct-ct-short/" 2>/dev/null || true
$SSMTL benchmark --data "$OUT/ct.h5" --out "$OUT/ct-ct-short" --labeled-volumes 1 "${FT[@]}" \
    --pretrain-steps "$SHORT_PRETRAIN_STEPS" --methods "$METHODS"
elapsed ct-ct-short
mkdir -p "$OUT/ct-mr" && rm -rf "$OUT/ct-mr/pretrain" && cp -r "$OUT/ct-ct/pretrain" "$OUT/ct-mr/pretrain"
$SSMTL benchmark --data "$OUT/ct.h5" --finetune-data "$OUT/mr.h5" --out "$OUT/ct-mr" --methods "$METHODS" \
    --labeled-volumes "$BUDGETS" --frozen-encoder "${COMMON[@]}"
elapsed ct-mr
$SSMTL benchmark --data "$OUT/mr.h5" --out "$OUT/mr-mr" --methods "$METHODS" --labeled-volumes "$BUDGETS" \
    --frozen-encoder "${COMMON[@]}"
elapsed mr-mr
$PYTHON benchmarks/verdict.py "$OUT" | tee "$OUT/verdict.md"
echo "total: $(( $(date +%s) - t0 ))s"
