#!/usr/bin/env bash
# A single-node SLURM cluster on localhost, for the tests that submit real job arrays
# (tests/slurm.rs). Works without systemd or cgroups (containers, CI).
#
#   scripts/slurm_cluster.sh install          Debian's slurmctld, slurmd, slurm-client, munge (idempotent)
#   scripts/slurm_cluster.sh start STATE_DIR  munged (if not running), slurmctld and slurmd; config, spool,
#                                             logs and pid files under STATE_DIR; prints `SLURM_CONF=...`
#   scripts/slurm_cluster.sh stop STATE_DIR   stops the daemons started with that STATE_DIR
#
# Clients (sbatch, squeue, scancel) reach the cluster through SLURM_CONF=STATE_DIR/slurm.conf.
set -euo pipefail

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "slurm_cluster.sh $1: needs root (it installs packages and runs the daemons as root)" >&2
    exit 1
  fi
}

install_packages() {
  need_root install
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    return 0
  fi
  # The packages' install scripts would try to start their services; there is no init system here.
  local policy=/usr/sbin/policy-rc.d had_policy=0
  [ -e "$policy" ] && had_policy=1
  if [ "$had_policy" = 0 ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
  fi
  if ! apt-cache show slurmctld >/dev/null 2>&1; then
    apt-get update -q
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge
  [ "$had_policy" = 0 ] && rm -f "$policy"
  return 0
}

# Starts munged unless one runs already; a munged started here is stopped with the cluster.
start_munge() {
  local state=$1
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged
    touch "$state/munged.started"
    for _ in $(seq 50); do
      munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
      sleep 0.1
    done
    echo "slurm_cluster.sh: munged did not come up" >&2
    exit 1
  fi
}

write_conf() {
  local state=$1 host=$2 cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10))
  mkdir -p "$state/spool/ctld" "$state/spool/d" "$state/log"
  cat >"$state/slurm.conf" <<EOF
ClusterName=repro-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmctldPort=$((6817 + 10 * (RANDOM % 100)))
SlurmdPort=$((6818 + 10 * (RANDOM % 100)))
AuthType=auth/munge
StateSaveLocation=$state/spool/ctld
SlurmdSpoolDir=$state/spool/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem_mb / cpus))
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
DependencyParameters=kill_invalid_depend
ReturnToService=2
SchedulerParameters=sched_interval=1
MinJobAge=300
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_cluster() {
  need_root start
  local state host
  state=$(realpath -m "$1")
  host=$(hostname -s)
  for bin in slurmctld slurmd sbatch munged; do
    command -v "$bin" >/dev/null || { echo "slurm_cluster.sh start: $bin is not installed; run \`$0 install\` first" >&2; exit 1; }
  done
  mkdir -p "$state"
  start_munge "$state"
  write_conf "$state" "$host"
  export SLURM_CONF=$state/slurm.conf
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF" -N "$host"
  for _ in $(seq 100); do
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
      echo "SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 0.1
  done
  echo "slurm_cluster.sh start: the node did not become idle; logs in $state/log" >&2
  sinfo >&2 || true
  stop_cluster "$state"
  exit 1
}

stop_cluster() {
  local state pid
  state=$(realpath -m "$1")
  for daemon in slurmd slurmctld; do
    if [ -s "$state/$daemon.pid" ]; then
      pid=$(cat "$state/$daemon.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$state/$daemon.pid"
    fi
  done
  if [ -e "$state/munged.started" ] && [ -s /run/munge/munged.pid ]; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
    rm -f "$state/munged.started"
  fi
}

case "${1:-}" in
  install) install_packages ;;
  start) [ $# = 2 ] || { echo "usage: $0 start STATE_DIR" >&2; exit 2; }; start_cluster "$2" ;;
  stop) [ $# = 2 ] || { echo "usage: $0 stop STATE_DIR" >&2; exit 2; }; stop_cluster "$2" ;;
  *) echo "usage: $0 install | start STATE_DIR | stop STATE_DIR" >&2; exit 2 ;;
esac
