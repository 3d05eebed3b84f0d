#!/usr/bin/env bash
# Run on SLURM: the scheduler runs here (a login node), the work in two sbatch worker jobs
# described by cluster_configs/slurm.yaml (edit queue/account/memory first; see its README).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
config="${CLUSTER_CONFIG:-$here/../cluster_configs/slurm.yaml}"
occupy-dask --cluster slurm --cluster-config "$config" --print-job-script   # what each job will run
occupy-dask -i "${1:-$here/emd_1832.map}" --amplify \
    --cluster slurm --cluster-config "$config" --jobs 2 \
    -d "${2:-slurm_output}" --overwrite
