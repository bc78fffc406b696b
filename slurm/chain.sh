#!/bin/bash
# Submit slurm/train.sbatch and N restarts of it, each waiting for the one before, so that one
# run spans several allocations.  A restart starts only if the job before it did not succeed
# (it stopped at the time limit with a checkpoint, exit 75, or its tasks were killed).  All jobs of a
# chain share one job name (FBPINN_CHAIN_NAME, default fbpinn-<config>-<time>); a job that
# finishes the run, or fails in a way a restart would repeat (exit 1 or 2), cancels the
# pending rest.
#
#   slurm/chain.sh N [sbatch options] -- CONFIG [fbpinn train options]
#
#   slurm/chain.sh 3 --nodes=4 --ntasks-per-node=4 --gpus-per-task=1 --time=24:00:00 -- \
#       configs/wave2d_large.toml
#
# Prints the job ids, first to last.  FBPINN_OUT and the other variables of train.sbatch
# pass through to every job.
set -euo pipefail
usage() { echo "usage: $0 N [sbatch options] -- CONFIG [fbpinn train options]" >&2; exit 2; }
[ $# -ge 3 ] || usage
N=$1
shift
[[ "$N" =~ ^[0-9]+$ ]] || { echo "$0: N must be a number of restarts (0 or more), got '$N'" >&2; exit 2; }
opts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    opts+=("$1")
    shift
done
[ $# -ge 2 ] && [ "$1" = "--" ] || usage
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
name=${FBPINN_CHAIN_NAME:-fbpinn-$(basename "$1" .toml)-$(date +%Y%m%d-%H%M%S)}
opts+=("--job-name=$name")
# The jobs learn that they are in a chain from FBPINN_CHAIN, passed on even where the site
# exports nothing by default (unless the options choose their own --export).
export FBPINN_CHAIN=$name
[[ " ${opts[*]} " == *" --export"* ]] || opts+=("--export=ALL,FBPINN_CHAIN=$name")
job=$(sbatch --parsable "${opts[@]}" "$here/train.sbatch" "$@")
job=${job%%;*}
ids=("$job")
for ((i = 1; i <= N; i++)); do
    job=$(sbatch --parsable --dependency="afternotok:$job" --kill-on-invalid-dep=yes "${opts[@]}" \
          "$here/train.sbatch" "$@")
    job=${job%%;*}
    ids+=("$job")
done
echo "${ids[*]}"
