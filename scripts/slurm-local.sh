#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests/slurm.rs and for trying the jobs that
# `tsd reproduce … --emit-jobs` writes.
#
# usage: scripts/slurm-local.sh start|stop|status      (as root; Debian's slurm-wlm and munge installed:
#        apt-get install -y slurm-wlm munge)
#
# start: writes /etc/slurm/slurm.conf for this host (its CPUs and memory as slurmd detects them;
# refuses to replace a slurm.conf this script did not write), starts munged (as user munge),
# slurmctld and slurmd without systemd, and waits until the node is idle.
# stop: stops the three daemons it started. status: prints what runs and the node's state.
#
# No cgroups are needed (containers often refuse them): processes are tracked through /proc
# (proctrack/linuxproc), tasks are not bound (task/none) and no accounting is gathered. Jobs then
# see every core of the machine, so the emitted scripts set RAYON_NUM_THREADS from
# SLURM_CPUS_PER_TASK themselves.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
STATE=/var/spool/tsd-slurm
LOGS=/var/log/tsd-slurm
RUN=/run/tsd-slurm
MARK="# written by tsd scripts/slurm-local.sh"
WAIT_S=${TSD_SLURM_WAIT_S:-60}

die() {
  echo "slurm-local: $*" >&2
  exit 1
}

need_root() {
  [ "$(id -u)" = 0 ] || die "must run as root (slurmd runs jobs as their users; munged needs /run/munge)"
  for c in munged slurmctld slurmd sinfo scontrol; do
    command -v "$c" >/dev/null 2>&1 || die "$c not found: apt-get install -y slurm-wlm munge"
  done
}

# The pid in file $1 if that process is alive.
alive() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

write_conf() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script: not replacing it"
  fi
  local host node
  host=$(hostname -s)
  # slurmd -C prints this machine as slurmd sees it: NodeName=… CPUs=… RealMemory=…
  node=$(slurmd -C | head -n 1)
  case "$node" in
    NodeName=*) ;;
    *) die "slurmd -C printed no node line: $node" ;;
  esac
  mkdir -p "$(dirname "$CONF")" "$STATE/ctld" "$STATE/d" "$LOGS" "$RUN"
  chown -R slurm:slurm "$STATE/ctld" "$LOGS"
  cat >"$CONF.tmp" <<EOF
$MARK on $(date -u +%FT%TZ); stop with scripts/slurm-local.sh stop
ClusterName=tsd-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmdTimeout=300
KillWait=10
MinJobAge=600
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 0755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 20); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
    sleep 0.5
  done
  die "munged did not answer (see /var/log/munge/munged.log)"
}

node_state() {
  sinfo -h -N -o '%T' 2>/dev/null | head -n 1
}

start() {
  need_root
  write_conf
  start_munge
  alive "$RUN/slurmctld.pid" || /usr/sbin/slurmctld
  alive "$RUN/slurmd.pid" || /usr/sbin/slurmd
  local state=""
  for _ in $(seq $((WAIT_S * 2))); do
    state=$(node_state || true)
    case "$state" in
      idle | mixed | allocated)
        echo "slurm-local: node $(hostname -s) $state ($(sinfo -h -N -o 'CPUs=%c memory=%m MB'))"
        return
        ;;
      down* | drain* | fail*)
        # A node that went down with an earlier instance: this configuration is fresh.
        scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true
        ;;
    esac
    sleep 0.5
  done
  die "the node did not become idle within ${WAIT_S}s (state: ${state:-none}); logs in $LOGS"
}

stop_one() {
  local name=$1 pidfile=$2
  if alive "$pidfile"; then
    local pid
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 40); do
      kill -0 "$pid" 2>/dev/null || return 0
      sleep 0.25
    done
    die "$name (pid $pid) did not stop"
  fi
}

stop() {
  need_root
  stop_one slurmd "$RUN/slurmd.pid"
  stop_one slurmctld "$RUN/slurmctld.pid"
  stop_one munged /run/munge/munged.pid
  echo "slurm-local: stopped"
}

status() {
  for d in munged:/run/munge/munged.pid slurmctld:$RUN/slurmctld.pid slurmd:$RUN/slurmd.pid; do
    if alive "${d#*:}"; then
      echo "${d%%:*}: running (pid $(cat "${d#*:}"))"
    else
      echo "${d%%:*}: not running"
    fi
  done
  sinfo -h -N -o '%N %T CPUs=%c memory=%m MB' 2>/dev/null || echo "sinfo: no controller"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
