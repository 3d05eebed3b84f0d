#!/usr/bin/env bash
# Install (Debian packages, when missing) and start a one-node SLURM on this machine, for the
# `slurm` tests: munged, slurmctld and slurmd, everything on 127.0.0.1.
# Writes its state under $SLURM_TEST_DIR (default /tmp/occupy-dask-slurm) and the pids of the
# daemons it started there, so that stop.sh stops only those. Needs root (apt, munge user).
set -euo pipefail
DIR="${SLURM_TEST_DIR:-/tmp/occupy-dask-slurm}"
mkdir -p "$DIR"

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

# munge: a key readable by the munge user only, its run directory made by hand
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
mkdir -p "$DIR/munge" && chown munge:munge "$DIR/munge"
alive() {  # a pid file naming a live process (a zombie has exited)
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && [ "$(ps -o stat= -p "$(cat "$1")" | cut -c1)" != "Z" ]
}
if ! munge -n >/dev/null 2>&1; then
    su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=$DIR/munge/munged.pid"
    echo started > "$DIR/munged.started"
fi

CPUS="$(nproc)"
MEM_MB="$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))"
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
CONF_DIR=/etc/slurm
mkdir -p "$CONF_DIR"
cat > "$CONF_DIR/slurm.conf" <<CONF
ClusterName=occupytest
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmdParameters=config_overrides
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF

if ! alive "$DIR/slurmctld.pid"; then
    slurmctld -i
fi
if ! alive "$DIR/slurmd.pid"; then
    slurmd -N localhost
fi

for _ in $(seq 1 30); do
    if timeout 5 sinfo -h -o "%T" 2>/dev/null | grep -qE "idle|mixed|allocated"; then
        echo "slurm is up: $(sinfo -h -o '%P %D %T %c')"
        exit 0
    fi
    timeout 5 scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
    sleep 1
done
echo "slurm did not come up; logs in $DIR/log" >&2
exit 1
