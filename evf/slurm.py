"""SLURM batch scripts rendered as text (``sbatch`` reads them; nothing here talks to a cluster).

Lightning's SLURM environment picks up ranks from ``srun``: one task per GPU, so a run on N nodes
with G GPUs each needs ``--nodes=N --ntasks-per-node=G`` and ``--trainer.num_nodes N --trainer.devices G``.
"""
from __future__ import annotations

import shlex
from collections.abc import Sequence


def resource_lines(nodes: int, gpus: int, extra: Sequence[str] = ()) -> list[str]:
    lines = [f"#SBATCH --nodes={nodes}", f"#SBATCH --ntasks-per-node={max(gpus, 1)}"]
    if gpus > 0:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    return lines + [sbatch_line(line) for line in extra]


def sbatch_line(option: str) -> str:
    """``partition=gpu``, ``--partition=gpu`` or ``#SBATCH --partition=gpu`` -> ``#SBATCH --partition=gpu``."""
    option = option.strip()
    if option.startswith("#SBATCH"):
        return option
    return f"#SBATCH {option if option.startswith('-') else '--' + option}"


def device_overrides(nodes: int, gpus: int) -> list[str]:
    if gpus <= 0:
        return ["--trainer.num_nodes", str(nodes)]
    return ["--trainer.accelerator", "gpu", "--trainer.num_nodes", str(nodes), "--trainer.devices", str(gpus)]


def render_array(commands: Sequence[Sequence[str]], logs: Sequence[str], job_name: str, output_dir: str,
                 nodes: int = 1, gpus: int = 1, extra: Sequence[str] = ()) -> str:
    """A job array with one task per command; task i runs ``srun <commands[i]>`` with output to ``logs[i]``."""
    if not commands:
        raise ValueError("nothing to submit: every run is finished")
    runs = "\n".join(f"  {shlex.quote(shlex.join(c))}" for c in commands)
    log_files = "\n".join(f"  {shlex.quote(p)}" for p in logs)
    header = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --array=0-{len(commands) - 1}",
        f"#SBATCH --output={output_dir}/slurm-%A_%a.out",
        *resource_lines(nodes, gpus, extra),
    ]
    body = f"""
# One config x seed per array task; a finished run (metrics.json present) is never in this list.
set -euo pipefail
RUNS=(
{runs}
)
LOGS=(
{log_files}
)
CMD="${{RUNS[$SLURM_ARRAY_TASK_ID]}}"
LOG="${{LOGS[$SLURM_ARRAY_TASK_ID]}}"
mkdir -p "$(dirname "$LOG")"
echo "task $SLURM_ARRAY_TASK_ID on $(hostname): $CMD" | tee -a "$LOG"
eval "srun $CMD" >>"$LOG" 2>&1
"""
    return "\n".join(header) + "\n" + body
