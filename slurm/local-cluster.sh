#!/usr/bin/env bash
# A real two-node Slurm cluster on this one machine, for tests and for trying the Slurm backend.
#
#   slurm/local-cluster.sh start    # munged + slurmctld + slurmd for node1 and node2; waits until idle
#   slurm/local-cluster.sh status   # which daemons run, sinfo, and the SLURM_CONF line to export
#   slurm/local-cluster.sh stop     # stops the daemons this script started and forgets their jobs
#
# Everything lives in one directory (default /tmp/ft-recipes-slurm, or $FT_SLURM_DIR): its own
# munge key and socket, slurm.conf, state, spool and logs. Nothing under /etc is touched, so point
# the Slurm commands at it with:  export SLURM_CONF=<dir>/slurm.conf
#
# FT_SLURM_CPUS sets the CPUs each node offers (default: the cores). With FT_SLURM_OCI_RUNTIME set
# to an OCI runtime (runc, crun), `srun --container=<bundle>` works too: Slurm's own container
# support, configured in <dir>/oci.conf (the launcher's `container: oci`).
#
# Needs root and Debian's slurm-wlm + munge (apt-get install slurm-wlm munge). Both "nodes" are
# this host (NodeAddr 127.0.0.1, one slurmd per node name on its own port), so every job sees the
# same filesystem, as on a cluster with a shared one. Accounting is off: use squeue/scontrol.
set -euo pipefail

DIR=${FT_SLURM_DIR:-/tmp/ft-recipes-slurm}
PORT=${FT_SLURM_PORT:-16817}          # slurmctld; the two slurmd use the next two ports
NODES=(node1 node2)
CONF=$DIR/slurm.conf

die() { echo "local-cluster: $*" >&2; exit 1; }

running() {  # running PIDFILE: the daemon recorded in PIDFILE is alive
  local pid
  pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

write_conf() {
  local cpus host
  cpus=${FT_SLURM_CPUS:-$(nproc)}  # what each node offers Slurm; more than the cores lets more small jobs share them
  host=$(hostname -s)
  cat >"$CONF" <<EOF
# Written by slurm/local-cluster.sh: two slurmd on one host.
ClusterName=ftlocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$DIR/munge-socket/munge.socket,cred_expire=30
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdSpoolDir=$DIR/spool/%n
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=15
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=60
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=node[1-2] NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + 1))-$((PORT + 2)) CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

write_oci_conf() {  # Slurm's container support: this runtime runs each step's bundle
  local runtime=$1 root=$DIR/oci-state
  cat >"$DIR/oci.conf" <<EOF
RunTimeQuery="$runtime --root=$root state %n.%u.%j.%s.%t"
RunTimeRun="$runtime --root=$root run %n.%u.%j.%s.%t -b %b"
RunTimeKill="$runtime --root=$root kill -a %n.%u.%j.%s.%t"
RunTimeDelete="$runtime --root=$root delete --force %n.%u.%j.%s.%t"
EOF
}

start_munge() {
  running "$DIR/run/munged.pid" && return
  mkdir -p "$DIR/munge" "$DIR/munge-socket"
  chmod 700 "$DIR/munge"
  chmod 755 "$DIR" "$DIR/munge-socket"   # munged insists that clients can reach its socket
  if [ ! -s "$DIR/munge/munge.key" ]; then
    head -c 1024 /dev/urandom >"$DIR/munge/munge.key"
    chmod 400 "$DIR/munge/munge.key"
  fi
  munged --socket="$DIR/munge-socket/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed"
}

wait_idle() {
  local i
  for i in $(seq 60); do
    if [ "$(sinfo -h -N -o '%t' 2>/dev/null | grep -cx 'idle')" = "${#NODES[@]}" ]; then
      return
    fi
    sleep 0.5
  done
  sinfo -N >&2 || true
  die "the nodes did not become idle in 30 s; see $DIR/log/"
}

start() {
  [ "$(id -u)" = 0 ] || die "needs root (the daemons run as SlurmUser=root)"
  command -v slurmctld >/dev/null && command -v munged >/dev/null \
    || die "slurm-wlm and munge are not installed: apt-get install slurm-wlm munge"
  mkdir -p "$DIR"/{state,spool,run,log}
  export SLURM_CONF=$CONF
  start_munge
  if ! running "$DIR/run/slurmctld.pid"; then
    write_conf
    rm -f "$DIR/oci.conf"
    [ -z "${FT_SLURM_OCI_RUNTIME:-}" ] || write_oci_conf "$FT_SLURM_OCI_RUNTIME"
    slurmctld -i
  fi
  local node
  for node in "${NODES[@]}"; do
    running "$DIR/run/slurmd-$node.pid" || slurmd -N "$node"
  done
  wait_idle
  echo "local Slurm cluster up: ${NODES[*]}; use it with:  export SLURM_CONF=$CONF"
}

stop() {
  local name pidfile jobs
  if running "$DIR/run/slurmctld.pid"; then  # end the jobs first: their processes outlive slurmd
    export SLURM_CONF=$CONF
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      scancel $jobs || true
      for _ in $(seq 60); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
    fi
  fi
  for name in "${NODES[@]/#/slurmd-}" slurmctld munged; do
    pidfile=$DIR/run/$name.pid
    if running "$pidfile"; then
      kill "$(cat "$pidfile")" 2>/dev/null || true
      for _ in $(seq 50); do running "$pidfile" || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
  done
  rm -rf "$DIR/state" "$DIR/spool"   # a new cluster starts without the old jobs
  echo "local Slurm cluster stopped"
}

status() {
  local name state=0
  for name in munged slurmctld "${NODES[@]/#/slurmd-}"; do
    if running "$DIR/run/$name.pid"; then
      echo "$name: running (pid $(cat "$DIR/run/$name.pid"))"
    else
      echo "$name: stopped"
      state=3
    fi
  done
  if [ "$state" = 0 ]; then
    SLURM_CONF=$CONF sinfo -N
    echo "export SLURM_CONF=$CONF"
  fi
  return "$state"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
