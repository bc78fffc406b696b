#!/usr/bin/env bash
# Weak scaling on a many-core node (the 16-core machine with the GPU, or a cluster node): cos1d
# with 128 and 32 subdomains per rank (128 also compiled) and laplace 2-D with an 8 x 8 block per rank, on 1, 2, 4
# and 8 ranks (RANKS), one thread per rank, ranks bound to cores, ROUNDS rounds interleaved.
# One JSON line per measurement in $OUT/scaling.jsonl (fields of scripts/scaling.py --worker),
# then the ping-pong of scripts/alphabeta.py on 2 ranks in $OUT/alphabeta.json.
#   OUT=/tmp/scaling bash scripts/device_scaling.sh          # about 5 minutes on 16 cores
#   python scripts/alphabeta.py --fit $OUT/alphabeta.json   # the prediction from that machine
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/scaling}; mkdir -p "$OUT"
PY=${PY:-python}
RANKS=${RANKS:-"1 2 4 8"}; ROUNDS=${ROUNDS:-2}; STEPS=${STEPS:-300}
MPIEXEC=$(dirname "$(command -v "$PY")")/mpiexec; [ -x "$MPIEXEC" ] || MPIEXEC=mpiexec
BIND=${BIND:---bind-to core}
export OMP_NUM_THREADS=1
run() {  # ranks, worker arguments...
  local r=$1; shift
  $MPIEXEC -n "$r" $BIND "$PY" scripts/scaling.py --steps "$STEPS" "$@" 2>>"$OUT/errors.log" \
    | sed -n "s/^{/{\"round\": $round, \"args\": \"$*\", /p" >> "$OUT/scaling.jsonl"
}
for round in $(seq "$ROUNDS"); do
  for r in $RANKS; do
    run "$r" --worker $((128 * r)) $((12800 * r))
    run "$r" --worker $((128 * r)) $((12800 * r)) --compiled
    run "$r" --worker $((32 * r)) $((3200 * r))
    case $r in 1) g="8 8";; 2) g="16 8";; 4) g="16 16";; 8) g="32 16";; 16) g="32 32";; *) g="";; esac
    [ -n "$g" ] && run "$r" --worker 0 0 --grid $g
  done
done
$MPIEXEC -n 2 $BIND "$PY" scripts/alphabeta.py --measure > "$OUT/alphabeta.json" 2>>"$OUT/errors.log"
cat "$OUT/scaling.jsonl"
