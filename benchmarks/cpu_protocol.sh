#!/usr/bin/env bash
# The protocol behind docs/benchmarks.md, sized for 2 CPU cores, in pieces of about 3 hours.
#
#   PIECE=1 bash benchmarks/cpu_protocol.sh     # from the repository root, with .venv/bin on PATH
#   PIECE=2 bash benchmarks/cpu_protocol.sh     # ... then 3, then 4 (each its own session)
#   PIECE=all bash benchmarks/cpu_protocol.sh   # everything in one go
#   DRAWS=5 PIECE=main bash benchmarks/cpu_protocol.sh   # only CT->CT and CT->MR, to 5 draws
#
# Every piece resumes: all settings keep their runs in one folder, $OUT/runs, named by what
# defines them, so every finished pre-training and fine-tuning run is reused (by any setting that
# needs it), an interrupted pre-training resumes from its checkpoint, and a benchmark only adds
# the draws it lacks. Interrupted? Start the same piece again. Each piece ends with the verdict
# so far (benchmarks/verdict.py, also in $OUT/verdict.md). JOBS=2 (the default) starts every
# benchmark twice on the same folders: the two processes share its runs (one core each).
#
# Design (docs/benchmarks.md, "How the protocol works"): one labeled subject (BUDGET), 1500
# pre-training steps per run, a width-8 U-Net at 64 px, 60 phantom subjects per domain (18 of
# them tested). A draw = the labeled and validation subjects, the fine-tuning seed and, for
# every pre-trained method, its own pre-training run: every draw is an independent replicate;
# the 95 % t interval is over draws (none below 3), with the MDE at 80 % power beside it. Each
# draw fine-tunes every method with every candidate recipe x lr (RECIPES x LRS: full fine-tuning
# and LP-FT, at 1e-3 and 3e-3) and keeps, per method, the best on the draw's validation
# subjects; only that one is tested. Scratch gets every candidate the others get.
#
# Settings (folders of $OUT, each with results.json / results.md / dice_vs_labels.png):
#   ct-ct              CT->CT: scratch, contrastive (MoCo v2), multitask           the plan's draws
#   ct-mr              pre-train on CT, fine-tune and test on MR                    the plan's draws
#   ct-ct-pool         CT->CT with a POOL_SUBJECTS-subject unlabeled CT pool beside the 42
#                      training subjects (another phantom seed: never labeled or tested)  POOL_DRAWS
#   ct-ct-frozen       decoder + head on a frozen encoder, a frozen random encoder as the floor
#                      (lrs only: LP-FT and the encoder's lr do nothing to a frozen encoder)  FROZEN_DRAWS
#   ablation           encoder tasks alone, decoder tasks alone, the multitask encoder with a random
#                      decoder, multitask + local contrast (against scratch and multitask)  ABLATION_DRAWS
#   ablation-position  multitask with position positives in its contrastive task (against ct-ct's
#                      multitask, draw by draw)                                     ABLATION_DRAWS
#
# Cost. Measured on 2 cores of an Intel Xeon (torch 2.13.0+cpu, fp32, one thread per process):
# a multitask pre-training 13 min, MoCo v2 4 min, a fine-tuning run 2.0 min, testing 18 subjects
# at native resolution 0.3 min; guessed, not measured: encoder tasks 6, decoder tasks 9,
# multitask + local contrast 16 min. With 4 candidates a cell is 8.3 CPU min; one draw of ct-ct +
# ct-mr is 67 CPU min. PIECE 1 measures it all again: benchmarks/plan.py turns the pilot's costs
# and variance components into the number of draws (intervals.plan: the smallest MDE within
# MAIN_CPU_HOURS, 11 CPU hours for ct-ct + ct-mr, pilot included) and prints the MDE of every
# comparison ($OUT/plan.md). In CPU minutes (2 per minute on 2 cores), if the plan says 10 draws:
#   PIECE=1  caches; the pilot: ct-ct, ct-mr with PILOT_DRAWS (3); the plan;
#            ct-ct-pool with 3 draws                                  ~305 CPU min, ~2 h 40 min
#   PIECE=2  ct-ct, ct-mr to half way (7); ct-ct-frozen with 3 draws   ~310 CPU min, ~2 h 45 min
#   PIECE=3  ct-ct, ct-mr to the plan (10); ct-ct-frozen to 10          ~300 CPU min, ~2 h 40 min
#   PIECE=4  ablation and ablation-position with 3 draws; ct-ct-pool to 5
#                                                                       ~325 CPU min, ~2 h 55 min
# (wall times include a few idle minutes at the end of each setting, while the second process
# waits for the first's last run). More draws later: raise DRAWS, POOL_DRAWS ... and run a piece again.
#
# A smoke run of the whole script (tiny sizes; RECIPES={} until train.lp_steps exists):
#   OUT=/tmp/smoke PRETRAIN_STEPS=8 FINETUNE_STEPS=4 SUBJECTS=16 POOL_SUBJECTS=8 SIZE=32 RECIPES='{}' \
#   MAIN_CPU_HOURS=0.1 FROZEN_DRAWS=4 POOL_DRAWS=4 PIECE=all bash benchmarks/cpu_protocol.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SSMTL=${SSMTL:-ssmtl}
PYTHON=${PYTHON:-python}
OUT=${OUT:-benchmarks/out}/cpu
RUNS=$OUT/runs
PIECE=${PIECE:-1}
JOBS=${JOBS:-2}
SUBJECTS=${SUBJECTS:-60}
POOL_SUBJECTS=${POOL_SUBJECTS:-300}
POOL_SEED=${POOL_SEED:-1}  # the cohort is phantom seed 0: another seed, other virtual patients
SIZE=${SIZE:-64}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-1500}
FINETUNE_STEPS=${FINETUNE_STEPS:-auto}
BUDGET=${BUDGET:-1}
LRS=${LRS:-1e-3,3e-3}
RECIPES=${RECIPES:-'{"full": {}, "lp-ft": {"train": {"lp_steps": 100, "encoder_lr_scale": 0.1}}}'}
PILOT_DRAWS=${PILOT_DRAWS:-3}
MAIN_CPU_HOURS=${MAIN_CPU_HOURS:-11}
POOL_DRAWS=${POOL_DRAWS:-5}
FROZEN_DRAWS=${FROZEN_DRAWS:-10}
ABLATION_DRAWS=${ABLATION_DRAWS:-3}
METHODS=scratch,contrastive,multitask
mkdir -p "$OUT/logs"
t0=$(date +%s)
elapsed() { echo "$1: $(( $(date +%s) - t0 ))s since the start of this piece"; }

caches() {
  for domain in ct mr; do
    [ -f "$OUT/$domain.h5" ] || $SSMTL cache build --dataset phantom --out "$OUT/$domain.h5" --subjects "$SUBJECTS" \
        --domain "$domain" --size "$SIZE" > /dev/null
  done
  # the pool: every subject for pre-training (no test split), from another phantom seed
  [ -f "$OUT/pool.h5" ] || $SSMTL cache build --dataset phantom --out "$OUT/pool.h5" --subjects "$POOL_SUBJECTS" \
      --domain ct --size "$SIZE" --seed "$POOL_SEED" --test-fraction 0 > /dev/null
  $PYTHON - "$OUT/ct.h5" "$OUT/pool.h5" <<'EOF'
import sys
from ssmtl.data.cache import SliceCache
cohort, pool = SliceCache(sys.argv[1]), SliceCache(sys.argv[2])
shared = {v.source for v in cohort.volumes} & {v.source for v in pool.volumes}
assert cohort.fingerprint != pool.fingerprint and not shared, f"the pool shares {len(shared)} volumes with the cohort"
print(f"pool: {len({v.subject for v in pool.volumes})} subjects, none of the cohort's {len({v.subject for v in cohort.volumes})} "
      "(sources and fingerprints differ; inside a cache set their names are pool/... and ct/...)")
EOF
}

# One setting: `bench NAME DRAWS ARGS...`, JOBS processes side by side on the same folders (each
# leaves the runs another is making to it and does the next; see ssmtl.experiments.benchmark).
bench() {
  local name=$1 draws=$2
  shift 2
  local pids=() j
  for j in $(seq 1 "$JOBS"); do
    echo "== piece $PIECE, $draws draws, $(date -u +%FT%TZ)" >> "$OUT/logs/$name.$j.log"
    $SSMTL benchmark --out "$OUT/$name" --runs "$RUNS" --draws "$draws" --labeled-volumes "$BUDGET" \
        --pretrain-steps "$PRETRAIN_STEPS" --steps "$FINETUNE_STEPS" --set pretrain.model.base_channels=8 \
        "$@" >> "$OUT/logs/$name.$j.log" 2>&1 &
    pids+=($!)
    sleep 2  # the first claims the first run; the second starts on the next
  done
  trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
  local failed=0
  for j in "${!pids[@]}"; do
    wait "${pids[$j]}" || { failed=1; echo "$name (process $((j + 1))) failed:"; tail -n 5 "$OUT/logs/$name.$((j + 1)).log"; }
  done
  trap - INT TERM
  [ "$failed" = 0 ] || exit 1
  elapsed "$name ($draws draws)"
}

GRID=(--finetune-lrs "$LRS" --set "finetune_recipes=$RECIPES")
ct_ct() { bench ct-ct "$1" --data "$OUT/ct.h5" --methods "$METHODS" "${GRID[@]}"; }
ct_mr() { bench ct-mr "$1" --data "$OUT/ct.h5" --finetune-data "$OUT/mr.h5" --methods "$METHODS" "${GRID[@]}"; }
pool() { bench ct-ct-pool "$1" --data "$OUT/ct.h5" --data "$OUT/pool.h5" --finetune-data "$OUT/ct.h5" --methods "$METHODS" "${GRID[@]}"; }
frozen() { bench ct-ct-frozen "$1" --data "$OUT/ct.h5" --methods "$METHODS" --frozen-encoder --finetune-lrs "$LRS"; }
ablation() {  # encoder tasks alone, decoder tasks alone, a random decoder, and local contrast joining multitask
  bench ablation "$1" --data "$OUT/ct.h5" "${GRID[@]}" --methods "scratch,multitask,encoder-tasks=contrastive+order+position,\
decoder-tasks=reconstruct+neighbor,multitask-random-decoder=multitask:encoder,multitask-local=multitask+local-contrastive"
}
ablation_position() {  # the position positives (PCL) in every contrastive task; verdict.py pairs it with ct-ct's multitask
  bench ablation-position "$1" --data "$OUT/ct.h5" --methods scratch,multitask "${GRID[@]}" \
      --set pretrain.tasks.contrastive.positives=position
}
planned() {  # the main settings' draws: DRAWS, else the plan (made from the pilot when missing)
  if [ -n "${DRAWS:-}" ]; then echo "$DRAWS"; return; fi
  [ -f "$OUT/plan.json" ] || $PYTHON benchmarks/plan.py "$OUT/ct-ct" "$OUT/ct-mr" --budget-hours "$MAIN_CPU_HOURS" \
      --json "$OUT/plan.json" > "$OUT/plan.md"
  $PYTHON -c "import json, sys; print(max(json.load(open(sys.argv[1]))['draws'], $PILOT_DRAWS))" "$OUT/plan.json"
}
verdict() { $PYTHON benchmarks/verdict.py "$OUT" | tee "$OUT/verdict.md"; }

piece1() {
  caches
  ct_ct "$PILOT_DRAWS"
  ct_mr "$PILOT_DRAWS"
  planned > /dev/null && cat "$OUT/plan.md" 2>/dev/null || true
  pool 3
}
half() { local g; g=$(planned); echo $(( PILOT_DRAWS + (g - PILOT_DRAWS + 1) / 2 )); }
piece2() { ct_ct "$(half)"; ct_mr "$(half)"; frozen 3; }
piece3() { ct_ct "$(planned)"; ct_mr "$(planned)"; frozen "$FROZEN_DRAWS"; }
piece4() { ablation "$ABLATION_DRAWS"; ablation_position "$ABLATION_DRAWS"; pool "$POOL_DRAWS"; }
# the two main settings only, to DRAWS (else the plan): one draw at a time keeps them level when a
# session may end mid-way, e.g. `for d in 4 5 6; do DRAWS=$d PIECE=main bash benchmarks/cpu_protocol.sh; done`
main_settings() { ct_ct "$(planned)"; ct_mr "$(planned)"; }

case "$PIECE" in
  1) piece1 ;;
  2) piece2 ;;
  3) piece3 ;;
  4) piece4 ;;
  main) main_settings ;;
  all) piece1; piece2; piece3; piece4 ;;
  *) echo "PIECE=$PIECE: use 1, 2, 3, 4, main or all" >&2; exit 2 ;;
esac
verdict
echo "piece $PIECE: $(( $(date +%s) - t0 ))s"
