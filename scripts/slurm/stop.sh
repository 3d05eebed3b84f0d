#!/usr/bin/env bash
# Stop the SLURM daemons that start.sh started (by their pid files), and munged if it started it;
# waits until they have exited.
set -uo pipefail
DIR="${SLURM_TEST_DIR:-/tmp/occupy-dask-slurm}"
pids=()
for file in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
    [ -s "$file" ] && pids+=("$(cat "$file")")
done
if [ -f "$DIR/munged.started" ] && [ -s "$DIR/munge/munged.pid" ]; then
    pids+=("$(cat "$DIR/munge/munged.pid")")
fi
for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
for _ in $(seq 1 40); do
    alive=0
    for pid in "${pids[@]}"; do
        # a zombie (state Z) has exited even if no parent has reaped it yet
        if kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" | cut -c1)" != "Z" ]; then alive=1; fi
    done
    [ "$alive" = 0 ] && break
    sleep 0.25
done
for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" | cut -c1)" != "Z" ]; then kill -9 "$pid" 2>/dev/null || true; fi
done
rm -f "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munged.started"
exit 0
