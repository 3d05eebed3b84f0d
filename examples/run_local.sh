#!/usr/bin/env bash
# Local run on the shipped EMDB map: estimate, amplify, plots, all maps, a stage-time table.
# Threads on all cores by default; add e.g. `--workers 2 --threads 1` for a LocalCluster of
# processes, or `--format ome.zarr` for napari.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
occupy-dask -i "$here/emd_1832.map" --amplify --plot --save-all-maps --profile \
    -d "${1:-example_output}" --overwrite -v
