#!/bin/bash
# Multi-node `evf fit` under SLURM. Lightning's SLURM environment reads ranks from srun: one task per GPU.
#
#   sbatch --nodes=2 scripts/slurm_fit.sh --config experiments/base.yaml --config experiments/paper/refcoco.yaml \
#          --run_dir runs/paper/refcoco-2x4
#
# Arguments are passed to `evf fit`; the node and GPU counts come from the allocation (--nodes,
# --ntasks-per-node on the sbatch line override the defaults below) and are appended last, so they
# win over the config files. On preemption SLURM sends SIGUSR1 90 s early: Lightning saves a
# checkpoint and requeues the job, which resumes from it. EVF (default: evf) names the launcher,
# e.g. EVF="python -m evf.cli".
#SBATCH --job-name=evf-fit
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --signal=SIGUSR1@90
#SBATCH --requeue
set -euo pipefail

NODES="${SLURM_NNODES:-1}"
GPUS_PER_NODE="${SLURM_NTASKS_PER_NODE:-4}"
GPUS_PER_NODE="${GPUS_PER_NODE%%(*}"   # "4(x2)" -> "4"
read -r -a LAUNCHER <<< "${EVF:-evf}"

echo "evf fit on ${NODES} node(s) x ${GPUS_PER_NODE} GPU(s): $*"
srun "${LAUNCHER[@]}" fit "$@" \
    --trainer.accelerator gpu --trainer.num_nodes "${NODES}" --trainer.devices "${GPUS_PER_NODE}"
