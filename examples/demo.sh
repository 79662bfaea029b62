#!/usr/bin/env bash
# The main job on the embedded phantom data, as a user would type it:
# cache -> multi-task pre-training -> fine-tune (pre-trained and from scratch) -> evaluate -> compare -> report.
# Fine-tuning validates every 50 steps on 2 labeled subjects outside the budget, keeps its best step and
# stops when the validation Dice has not improved for 200 steps (FINETUNE_STEPS=auto; a number is a fixed
# schedule). Override with e.g. PRETRAIN_STEPS=2000 FINETUNE_STEPS=600 make demo.
set -euo pipefail

OUT=${DEMO_DIR:-demo}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-300}
FINETUNE_STEPS=${FINETUNE_STEPS:-auto}
FINETUNE_LR=${FINETUNE_LR:-3e-3}
LABELED=${LABELED:-2}

run() { printf '\n$ %s\n' "$*"; "$@"; }

rm -rf "$OUT" && mkdir -p "$OUT"
# the original, low-variability phantom: a quick demo of the pipeline. The benchmarks use
# the default realistic variability, on which one labeled subject is far from enough.
run ssmtl cache build --dataset phantom --out "$OUT/phantom-ct.h5" --subjects 16 --domain ct --size 64 --variability low
run ssmtl pretrain --data "$OUT/phantom-ct.h5" --task contrastive --task order --task position --task reconstruct --task neighbor --out "$OUT/pre" \
    --steps "$PRETRAIN_STEPS" --batch-size 16 --set model.base_channels=8 --set train.checkpoint_every=100
for init in pre none; do
    name=$([ "$init" = none ] && echo scratch || echo pretrained)
    init_dir=$([ "$init" = none ] && echo none || echo "$OUT/pre")
    run ssmtl finetune --data "$OUT/phantom-ct.h5" --init "$init_dir" --labeled-volumes "$LABELED" \
        --out "$OUT/ft-$name" --steps "$FINETUNE_STEPS" --lr "$FINETUNE_LR" --set model.base_channels=8
    run ssmtl evaluate "$OUT/ft-$name"
done
run ssmtl compare "scratch=$OUT/ft-scratch" "multitask=$OUT/ft-pretrained"
run ssmtl report "$OUT/ft-pretrained"
