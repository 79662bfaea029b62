#!/usr/bin/env bash
# Build the caches of the real-data protocol from MM-WHS (and optionally ACDC).
#
#   bash benchmarks/real_caches.sh /data/MM-WHS [/data/ACDC]
#   CACHES=benchmarks/out/real bash benchmarks/gpu_protocol.sh
#
# MM-WHS: the folder that holds ct_train_1001_image.nii.gz / _label.nii.gz ... (nested
# folders such as ct_train/ and mr_test/ are searched); the unlabeled test volumes go into
# the caches too, for pre-training only. ACDC: the folder holding patient001/ ... with
# Info.cfg (its ED and ES frames). Each cache holds out 30 % of its labeled subjects for
# testing (--test-fraction), drawn with --split-seed 0; pre-training never reads them.
# SIZE (default 256) is the in-plane size; WORKERS processes load volumes in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: bash benchmarks/real_caches.sh MMWHS_DIR [ACDC_DIR]" >&2
  exit 2
fi
SSMTL=${SSMTL:-ssmtl}
OUT=${OUT:-benchmarks/out}/real
SIZE=${SIZE:-256}
WORKERS=${WORKERS:-4}
mkdir -p "$OUT"
for modality in ct mr; do
  [ -f "$OUT/$modality.h5" ] || $SSMTL cache build --dataset mmwhs --path "$1" --modality "$modality" \
      --out "$OUT/$modality.h5" --size "$SIZE" --workers "$WORKERS"
done
if [ $# -ge 2 ]; then
  [ -f "$OUT/acdc.h5" ] || $SSMTL cache build --dataset acdc --path "$2" --out "$OUT/acdc.h5" --size "$SIZE" --workers "$WORKERS"
fi
echo "next: CACHES=$OUT bash benchmarks/gpu_protocol.sh"
