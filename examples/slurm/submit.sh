#!/usr/bin/env bash
# Queue the N shards of a run as one Slurm array, then its merge once they have all ended:
#
#   export MODEL=Qwen/Qwen2.5-VL-7B-Instruct SEED=/shared/seed.jsonl IMAGES=/shared/images \
#          RUN=evol-v1 N=8 CHECKPOINTS=/shared/checkpoints
#   examples/slurm/submit.sh [sbatch options for the shards, e.g. --partition=gpu]
#
# Running it again resumes the run: finished shards skip their samples, the others go on,
# and the merge adds what is new. Variables: see evolve.sbatch.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${N:?set N, the number of shards}" "${RUN:?set RUN, the run name}"
export N RUN
array=$(sbatch --parsable --array="1-$N" "$@" "$here/evolve.sbatch")
array=${array%%;*} # "jobid;cluster" on a federation
merge=$(sbatch --parsable --dependency="afterany:$array" "$here/merge.sbatch")
echo "shards: job $array (tasks 1-$N); merge: job ${merge%%;*}, once every shard has ended"
