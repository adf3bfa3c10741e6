#!/bin/bash
# Run examples/pi.py over every core of a SLURM allocation:
#     sbatch examples/slurm_job.sh
# scoop_rt finds the nodes and slots in the job's environment; it starts the
# workers of the other nodes over SSH, so the nodes must accept SSH between
# them without a password (the usual case on clusters) and know each other's
# host keys. The venv must be at the same path on every node (a shared home).
#SBATCH --job-name=scoop_rt-pi
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --time=00:10:00
#SBATCH --output=scoop_rt-pi-%j.out

set -euo pipefail
source "$HOME/scoop_rt-venv/bin/activate"   # python3 -m venv ~/scoop_rt-venv && pip install scoop_rt
cd "$SLURM_SUBMIT_DIR"
python -m scoop_rt examples/pi.py 200000 400
