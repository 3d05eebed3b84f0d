"""The Python API on a distributed Client: estimate on a LocalCluster of processes, amplify
lazily, write OME-Zarr for napari. The same code runs on a SLURM cluster with
``dask_jobqueue.SLURMCluster`` in place of ``LocalCluster``."""

import sys
import tempfile
from pathlib import Path

import numpy as np
from distributed import Client, LocalCluster

import occupy_dask

here = Path(__file__).parent
output_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("api_client_output")

if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster) as client:
        print(f"cluster: {len(client.scheduler_info()['workers'])} workers")
        with tempfile.TemporaryDirectory(dir=".") as scratch:  # workers must reach the spilled stores
            with occupy_dask.estimate(here / "emd_1832.map", client=client, temp_dir=scratch, chunks=32) as est:
                amplified = occupy_dask.modify(est, amount=1.0)
                scale, amp = client.compute([est.scale, amplified], sync=True)
                confident = est.confidence_map.compute() > 0.5
                print(f"s_max {est.s_max:.4g}; median scale where confident {np.median(scale[confident]):.3f}")
                print(f"amplified map range [{amp.min():.3g}, {amp.max():.3g}]")
                written = occupy_dask.write(est, output_dir, output_format="ome.zarr", client=client, overwrite=True)
                for kind, path in written.items():
                    print(f"wrote {kind:<10} {path}")
