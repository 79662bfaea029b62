#!/usr/bin/env bash
# The protocol behind docs/benchmarks.md, sized for 2 idle CPU cores (estimate below).
#
#   bash benchmarks/cpu_protocol.sh            # from the repository root, with .venv/bin on PATH
#
# Interrupted? Run it again: every finished pre-training and cell is reused, an
# interrupted pre-training resumes from its checkpoint. At the end it prints the verdict
# (benchmarks/verdict.py) and writes it to $OUT/verdict.md, ready for docs/benchmarks.md.
#
# Data: phantom caches with realistic inter-subject variability (the default), CT and MR, of
# SUBJECTS subjects each (default 60, the size of the MM-WHS cohort per modality; 30 % held out
# for testing: 18), 64 px, about 32 slices. The tables in docs/benchmarks.md made before
# 2026-12-02 used SUBJECTS=16 (5 test subjects); docs/benchmarks.md says which is which.
# Model: U-Net base width 8, depth 4. Pre-training: PRETRAIN_STEPS per method (batch 16).
# Every method is compared with scratch and with contrastive (MoCo v2) per (seed, test
# subject), with a 95 % bootstrap interval. Each setting is a folder of $OUT with
# results.json / results.md / dice_vs_labels.png.
#
# Fine-tuning uses the defaults a user gets (`--finetune-steps auto`): validate every 50 steps
# on up to 2 labeled subjects the budget leaves unused (the same for every method), keep the
# best step, stop after 200 steps without a new best, at most 1000 steps; with every training
# subject labeled there is nothing left to validate on and the 1000-step schedule runs whole.
#
# What runs by default (PROTOCOL=standard; 2 h 30 min with JOBS=2 on 2 cores of an Intel
# Xeon, torch 2.13.0+cpu, fp32, OMP_NUM_THREADS=1, HEADROOM_BUDGETS=1; docs/benchmarks.md):
#   headroom     CT, scratch only, 1 and all training subjects labeled: does the test bed
#                leave room between the two ends? (HEADROOM_BUDGETS=1 keeps only the
#                1-labeled cells the other settings reuse, when the all-labeled end, three
#                1000-step runs on every training subject, was measured before)
#   ct-ct        CT->CT, 1 labeled: scratch, contrastive, multitask
#   ablation     CT->CT, 1 labeled: encoder tasks alone, decoder tasks alone, and the multitask
#                pre-training fine-tuned with a random decoder
#   ct-mr        pre-train on CT, fine-tune and test on MR, 1 labeled
#   ct-ct-short  CT->CT, 1 labeled: pre-training a quarter as long
#   ct-ct-frozen CT->CT, 1 labeled, the frozen-encoder protocol (decoder + head trained on
#                the fixed pre-trained encoder: the representation alone)
#   mr-mr        MR->MR, 1 labeled: scratch, contrastive, multitask
#   ct-ct-pretrain-seed1
#                CT->CT again with every pre-training drawn from another seed (--set seed=1):
#                the intervals cover seeds and test subjects, not pre-training runs, so this
#                says whether a difference survives a second pre-training
#   ct-mr-pretrain-seed1, ablation-pretrain-seed1, ct-ct-short-pretrain-seed1
#                CT->MR, the ablation's two clear gains and the quarter-length pre-training
#                with seed-1 pre-trainings
# JOBS=2 (the default) runs the settings in two chains side by side (headroom .. ct-ct-frozen;
# mr-mr and the seed-1 repeats), JOBS=1 one after the other.
# PROTOCOL=full adds the label budgets 2 and 4 and the frozen encoder everywhere
# (about 3 hours more). A smoke run of the whole script: PRETRAIN_STEPS=8 FINETUNE_STEPS=4 SEEDS=2 SUBJECTS=16 OUT=/tmp/smoke.
set -euo pipefail
cd "$(dirname "$0")/.."
SSMTL=${SSMTL:-ssmtl}
PYTHON=${PYTHON:-python}
OUT=${OUT:-benchmarks/out}/cpu
PROTOCOL=${PROTOCOL:-standard}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-1500}
SHORT_PRETRAIN_STEPS=${SHORT_PRETRAIN_STEPS:-$(( PRETRAIN_STEPS / 4 ))}
FINETUNE_STEPS=${FINETUNE_STEPS:-auto}
FINETUNE_LR=${FINETUNE_LR:-3e-3}
SEEDS=${SEEDS:-3}
SUBJECTS=${SUBJECTS:-60}
JOBS=${JOBS:-2}
if [ "$PROTOCOL" = full ]; then BUDGETS=${BUDGETS:-1,2,4}; FROZEN_BUDGETS=$BUDGETS; else BUDGETS=${BUDGETS:-1}; FROZEN_BUDGETS=1; fi
mkdir -p "$OUT"
t0=$(date +%s)
for domain in ct mr; do
  [ -f "$OUT/$domain.h5" ] || $SSMTL cache build --dataset phantom --out "$OUT/$domain.h5" --subjects "$SUBJECTS" --domain "$domain" --size 64 > /dev/null
done
ALL=$($PYTHON -c "
import sys
from ssmtl.data.cache import SliceCache
cache = SliceCache(sys.argv[1])
print(len({v.subject for v in cache.volumes if v.split == 'train'}))" "$OUT/ct.h5")
HEADROOM_BUDGETS=${HEADROOM_BUDGETS:-1,$ALL}
FT=(--seeds "$SEEDS" --finetune-steps "$FINETUNE_STEPS" --finetune-lr "$FINETUNE_LR" --set model.base_channels=8)
COMMON=("${FT[@]}" --pretrain-steps "$PRETRAIN_STEPS")
METHODS=scratch,contrastive,multitask
elapsed() { echo "$1: $(( $(date +%s) - t0 ))s since start"; }

# Two chains of settings that share nothing but the caches and finished cells; JOBS=2 (the
# default) runs them side by side, one per core, JOBS=1 one after the other.
chain_a() {
  $SSMTL benchmark --data "$OUT/ct.h5" --out "$OUT/headroom" --methods scratch --labeled-volumes "$HEADROOM_BUDGETS" "${COMMON[@]}"
  elapsed headroom
  mkdir -p "$OUT/ct-ct" && cp -rn "$OUT/headroom/finetune" "$OUT/ct-ct/" 2>/dev/null || true
  $SSMTL benchmark --data "$OUT/ct.h5" --out "$OUT/ct-ct" --methods "$METHODS" --labeled-volumes "$BUDGETS" "${COMMON[@]}"
  elapsed ct-ct
  # A copy of what is missing reuses the runs above and keeps a setting's own pre-trainings
  # and cells on a re-run (anything stale is detected by the benchmark and recomputed).
  mkdir -p "$OUT/ablation" && cp -rn "$OUT/ct-ct/." "$OUT/ablation/"
  $SSMTL benchmark --data "$OUT/ct.h5" --out "$OUT/ablation" --labeled-volumes 1 "${COMMON[@]}" \
      --methods "$METHODS,encoder-only=contrastive+order+position,decoder-only=reconstruct+neighbor,multitask-encoder=multitask:encoder"
  elapsed ablation
  mkdir -p "$OUT/ct-mr" && rm -rf "$OUT/ct-mr/pretrain" && cp -r "$OUT/ct-ct/pretrain" "$OUT/ct-mr/pretrain"
  $SSMTL benchmark --data "$OUT/ct.h5" --finetune-data "$OUT/mr.h5" --out "$OUT/ct-mr" --methods "$METHODS" \
      --labeled-volumes "$FROZEN_BUDGETS" "${COMMON[@]}" $([ "$PROTOCOL" = full ] && echo --frozen-encoder)
  elapsed ct-mr
  mkdir -p "$OUT/ct-ct-short" && cp -rn "$OUT/ct-ct/finetune" "$OUT/ct-ct-short/" 2>/dev/null || true
  $SSMTL benchmark --data "$OUT/ct.h5" --out "$OUT/ct-ct-short" --labeled-volumes 1 "${FT[@]}" \
      --pretrain-steps "$SHORT_PRETRAIN_STEPS" --methods "$METHODS"
  elapsed ct-ct-short
  # the frozen-encoder cells live in their own setting (their own budgets), reusing the pre-trainings
  mkdir -p "$OUT/ct-ct-frozen" && cp -rn "$OUT/ct-ct/." "$OUT/ct-ct-frozen/"
  $SSMTL benchmark --data "$OUT/ct.h5" --out "$OUT/ct-ct-frozen" --methods "$METHODS" --labeled-volumes "$FROZEN_BUDGETS" --frozen-encoder "${COMMON[@]}"
  elapsed ct-ct-frozen
}

chain_b() {
  $SSMTL benchmark --data "$OUT/mr.h5" --out "$OUT/mr-mr" --methods "$METHODS" --labeled-volumes "$BUDGETS" \
      $([ "$PROTOCOL" = full ] && echo --frozen-encoder) "${COMMON[@]}"
  elapsed mr-mr
  # CT->CT again with every pre-training from seed 1. Scratch does not pre-train: its cells are
  # the headroom's, copied only once that setting has finished (results.json is written last),
  # else recomputed here.
  mkdir -p "$OUT/ct-ct-pretrain-seed1"
  if [ -f "$OUT/headroom/results.json" ]; then cp -rn "$OUT/headroom/finetune" "$OUT/ct-ct-pretrain-seed1/" 2>/dev/null || true; fi
  $SSMTL benchmark --data "$OUT/ct.h5" --out "$OUT/ct-ct-pretrain-seed1" --methods "$METHODS" --labeled-volumes 1 \
      "${COMMON[@]}" --set seed=1
  elapsed ct-ct-pretrain-seed1
  # CT->MR with the seed-1 pre-trainings (scratch's MR cells are mr-mr's)
  mkdir -p "$OUT/ct-mr-pretrain-seed1" && rm -rf "$OUT/ct-mr-pretrain-seed1/pretrain"
  cp -r "$OUT/ct-ct-pretrain-seed1/pretrain" "$OUT/ct-mr-pretrain-seed1/pretrain"
  cp -rn "$OUT/mr-mr/finetune" "$OUT/ct-mr-pretrain-seed1/" 2>/dev/null || true
  $SSMTL benchmark --data "$OUT/ct.h5" --finetune-data "$OUT/mr.h5" --out "$OUT/ct-mr-pretrain-seed1" --methods "$METHODS" \
      --labeled-volumes 1 "${COMMON[@]}" --set seed=1
  elapsed ct-mr-pretrain-seed1
  # the ablation's decoder variants again with seed-1 pre-trainings (contrastive, multitask and
  # scratch reused from ct-ct-pretrain-seed1)
  mkdir -p "$OUT/ablation-pretrain-seed1" && cp -rn "$OUT/ct-ct-pretrain-seed1/." "$OUT/ablation-pretrain-seed1/"
  $SSMTL benchmark --data "$OUT/ct.h5" --out "$OUT/ablation-pretrain-seed1" --labeled-volumes 1 "${COMMON[@]}" --set seed=1 \
      --methods "$METHODS,decoder-only=reconstruct+neighbor,multitask-encoder=multitask:encoder"
  elapsed ablation-pretrain-seed1
  # the quarter-length pre-training with seed 1 (in this chain because it is the shorter one;
  # scratch's cells are the headroom's, copied once that setting has finished)
  mkdir -p "$OUT/ct-ct-short-pretrain-seed1"
  if [ -f "$OUT/headroom/results.json" ]; then cp -rn "$OUT/headroom/finetune" "$OUT/ct-ct-short-pretrain-seed1/" 2>/dev/null || true; fi
  $SSMTL benchmark --data "$OUT/ct.h5" --out "$OUT/ct-ct-short-pretrain-seed1" --labeled-volumes 1 "${FT[@]}" \
      --pretrain-steps "$SHORT_PRETRAIN_STEPS" --methods "$METHODS" --set seed=1
  elapsed ct-ct-short-pretrain-seed1
}

if [ "$JOBS" -ge 2 ]; then
  echo "two chains side by side; their logs: $OUT/chain-a.log, $OUT/chain-b.log"
  chain_a > "$OUT/chain-a.log" 2>&1 & a=$!
  chain_b > "$OUT/chain-b.log" 2>&1 & b=$!
  trap 'kill $a $b 2>/dev/null' INT TERM
  failed=0
  wait "$a" || { failed=1; echo "chain a failed:"; tail -n 5 "$OUT/chain-a.log"; }
  wait "$b" || { failed=1; echo "chain b failed:"; tail -n 5 "$OUT/chain-b.log"; }
  [ "$failed" = 0 ] || exit 1
  grep -h "since start" "$OUT/chain-a.log" "$OUT/chain-b.log"
else
  chain_a
  chain_b
fi
$PYTHON benchmarks/verdict.py "$OUT" | tee "$OUT/verdict.md"
echo "total: $(( $(date +%s) - t0 ))s"
