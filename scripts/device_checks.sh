#!/usr/bin/env bash
# The measurements the machine with the GPU and 16 cores is needed for, in two parts that each fit
# one command of ten minutes there. Run from the repository root, with the reference harness in
# .reference/ (see its README) for the GPU part:
#   OUT=/tmp/checks bash scripts/device_checks.sh gpu       # about 8 minutes
#   OUT=/tmp/checks bash scripts/device_checks.sh scaling   # about 6 minutes
# gpu: the CUDA tests (the CUDA-graph replay against the eager run among them), the step times
# side by side with the reference (lapbig, lap8, cos, ho) and scripts/gpu.py's table.
# scaling: scripts/device_scaling.sh on CPU cores only, then the alpha-beta prediction fitted to
# the ping-pong measured there. Everything lands under $OUT; nothing in docs/ is changed.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-checks}; mkdir -p "$OUT"
PY=${PY:-python}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1
case ${1:-} in
  gpu)
    { date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "$PY" -c \
      "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$OUT/machine.txt" 2>&1
    timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$OUT/test_gpu.txt" 2>&1
    echo "test_gpu: rc $?"
    OUT="$OUT/side-by-side" DEV=cuda REF_PY="$PY" OURS_PY="$PY" timeout 300 bash .reference/run_side_by_side.sh \
      > "$OUT/side-by-side.txt" 2>&1
    echo "side by side: rc $?"
    timeout 100 "$PY" scripts/gpu.py --compiled laplace2d_multiscale wave2d_large_share --out "$OUT/gpu.md" \
      > "$OUT/gpu.txt" 2>&1
    echo "gpu.py: rc $?"
    ;;
  scaling)
    CUDA_VISIBLE_DEVICES="" OUT="$OUT/scaling" PY="$PY" timeout 480 bash scripts/device_scaling.sh \
      > "$OUT/scaling.txt" 2>&1
    echo "device_scaling: rc $?"
    cp docs/scaling.md "$OUT/scaling.md"
    timeout 60 "$PY" scripts/alphabeta.py --fit "$OUT/scaling/alphabeta.json" --out "$OUT/scaling.md" \
      > "$OUT/alphabeta.txt" 2>&1
    echo "alphabeta: rc $?"
    ;;
  *)
    echo "usage: bash scripts/device_checks.sh gpu|scaling" >&2
    exit 2
    ;;
esac
