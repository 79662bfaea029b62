#!/usr/bin/env bash
# One-GPU benchmark of the pre-training step (under 5 minutes on an H100/H200):
# slices/s and model FLOP utilisation for the default and a wide model at 128² and
# 256², bf16 / channels_last / torch.compile on and off, and a loader check.
#
#     bash benchmarks/gpu.sh [gpu_bench.py options]
#
# Run it from the repository root (or anywhere: it changes there) on a machine whose
# python3 (or $PYTHON) has torch with CUDA. ssmtl is installed editable without its
# dependencies; the ones the benchmark imports are installed if missing, from wheels
# in .whl/ when that folder exists (a machine without network), else from the index.
# The JSON is printed on stdout and written to ${OUT:-benchmarks/out}/gpu.json.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-benchmarks/out}
log() { echo "gpu.sh: $*" >&2; }

if ! "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu:", torch.cuda.is_available() and torch.cuda.get_device_name(0))' >&2; then
    log "FAILED: $PY cannot import torch; install torch with CUDA first (or set PYTHON=...)"
    exit 1
fi

# ssmtl itself, without dependencies (no build isolation: no network needed). Without it
# the benchmark still runs from src/ (benchmarks/common.py puts it on sys.path).
if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . >&2; then
    log "warning: 'pip install -e .' failed; running ssmtl from src/"
fi

# import name : distribution
needed="h5py:h5py pydantic:pydantic pluggy:pluggy typer:typer rich:rich accelerate:accelerate
safetensors:safetensors nibabel:nibabel yaml:pyyaml scipy:scipy"
failed=()
for pair in $needed; do
    module=${pair%%:*} dist=${pair##*:}
    "$PY" -c "import $module" 2>/dev/null && continue
    log "installing missing dependency: $dist"
    if [ -d .whl ] && "$PY" -m pip install -q --no-index --find-links .whl "$dist" >&2; then
        continue
    fi
    "$PY" -m pip install -q "$dist" >&2 || failed+=("$dist")
done
if [ ${#failed[@]} -gt 0 ]; then
    log "FAILED to install: ${failed[*]}"
    log "no package index reachable? put their wheels (and their dependencies') in .whl/ and run again"
    exit 1
fi

mkdir -p "$OUT_DIR"
exec "$PY" benchmarks/gpu_bench.py --out "$OUT_DIR/gpu.json" "$@"
