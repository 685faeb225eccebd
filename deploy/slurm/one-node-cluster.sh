#!/usr/bin/env bash
# A Slurm cluster of one node on this machine, to try trainerd.sbatch before a real cluster (the tests use it too).
# Needs root and Debian's slurm-wlm and munge (apt-get install slurm-wlm munge). Everything it makes stays in DIR:
# the munge key and socket, slurm.conf, the controller's state, the spool, pid and log files.
#
#   deploy/slurm/one-node-cluster.sh start DIR [PORT]   # munged, slurmctld on PORT (default 16817), slurmd on PORT+1
#   export SLURM_CONF=DIR/slurm.conf                    # then sbatch, squeue, scontrol talk to this cluster
#   deploy/slurm/one-node-cluster.sh stop DIR           # cancels its jobs and stops the three daemons
set -euo pipefail

usage="usage: one-node-cluster.sh start DIR [PORT] | stop DIR"
action=${1:?$usage}
dir=$(realpath -m "${2:?$usage}")
port=${3:-16817}
export SLURM_CONF=$dir/slurm.conf

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
    local seconds=$1
    shift
    for _ in $(seq $((seconds * 5))); do
        "$@" > /dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

# Stops the daemon whose pid file is $1, if it runs.
stop_daemon() {
    local pid
    pid=$(cat "$1" 2> /dev/null) || return 0
    kill "$pid" 2> /dev/null || return 0
    wait_for 10 bash -c "! kill -0 $pid" || kill -9 "$pid" 2> /dev/null || true
}

# Closes the descriptors this script inherited beyond 0, 1 and 2, so that the daemons do not keep them open (a
# caller that waits for EOF on one, as Foundation's Process does on a socket it gives its child, would wait forever).
close_inherited_descriptors() {
    local fd
    for fd in $(ls /proc/$$/fd); do
        if [ "$fd" -gt 2 ] && [ "$fd" -lt 255 ]; then eval "exec $fd>&-"; fi
    done
}

start() {
    close_inherited_descriptors
    for program in munged slurmctld slurmd; do
        command -v "$program" > /dev/null || { echo "one-node-cluster: $program is not installed (apt-get install slurm-wlm munge)" >&2; exit 1; }
    done
    [ "$(id -u)" -eq 0 ] || { echo "one-node-cluster: slurmd runs jobs as their users, so it needs root" >&2; exit 1; }
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    if [ ! -f "$dir/munge.key" ]; then
        (umask 077 && head -c 1024 /dev/urandom > "$dir/munge.key")
    fi
    # munged daemonizes itself; --force lets it run as root with its files outside /etc/munge.
    munged --force --key-file="$dir/munge.key" --socket="$dir/munge.socket" --pid-file="$dir/munged.pid" \
        --log-file="$dir/log/munged.log" --seed-file="$dir/munge.seed" < /dev/null >> "$dir/log/munged.log" 2>&1
    wait_for 10 test -S "$dir/munge.socket" || { echo "one-node-cluster: munged did not start: $dir/log/munged.log" >&2; exit 1; }

    cat > "$SLURM_CONF" <<EOF
ClusterName=trainerd-test
SlurmctldHost=$(hostname)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$(hostname) CPUs=$(nproc) RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
EOF
    # Both daemonize (their logs are in $dir/log); -i starts the controller without the state of an earlier run.
    slurmctld -i -f "$SLURM_CONF" < /dev/null >> "$dir/log/slurmctld.log" 2>&1
    slurmd -f "$SLURM_CONF" < /dev/null >> "$dir/log/slurmd.log" 2>&1
    if ! wait_for 30 bash -c '[ "$(sinfo -h -o %T)" = idle ]'; then
        echo "one-node-cluster: the node is not idle after 30 s (sinfo: $(sinfo -h -o %T 2>&1)); logs in $dir/log" >&2
        stop
        exit 1
    fi
    echo "one-node-cluster: ready; export SLURM_CONF=$SLURM_CONF"
}

stop() {
    if [ -f "$dir/slurmctld.pid" ]; then
        scancel --quiet --partition=debug 2> /dev/null || true
        wait_for 20 bash -c '[ -z "$(squeue -h -t RUNNING,COMPLETING -o %i)" ]' || true
    fi
    stop_daemon "$dir/slurmd.pid"
    stop_daemon "$dir/slurmctld.pid"
    stop_daemon "$dir/munged.pid"
}

case $action in
    start) start ;;
    stop) stop ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
