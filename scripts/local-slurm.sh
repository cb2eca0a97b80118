#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for trying the SLURM launcher (conf/hydra/launcher/slurm.yaml)
# and for the slow tests that submit to it (tests/test_slurm.py).
#
#   scripts/local-slurm.sh up      # make slurm-up:   install (apt), configure, start; returns once the node is idle
#   scripts/local-slurm.sh down    # make slurm-down: stop slurmd, slurmctld and munged
#   scripts/local-slurm.sh status  # exit 0 when the node answers
#
# Needs root on Debian/Ubuntu (apt-get, /etc/slurm, the daemons). Safe to run again: installs only what is missing,
# starts only what is not running, and rewrites only a slurm.conf this script wrote (a cluster's own slurm.conf is
# never touched: then `up` stops with an error). No cgroups are needed: processes are tracked by their parent
# (proctrack/linuxproc) and not bound to cores (task/none); there is no accounting database (sacct is not
# available; `scontrol show job` shows a finished job for MinJobAge seconds).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# Written by broadclass scripts/local-slurm.sh"
PACKAGES="slurm-wlm munge"
STATE=/var/lib/slurm
LOGS=/var/log/slurm
WAIT_S=${SLURM_UP_TIMEOUT_S:-60}

say() { echo "local-slurm: $*" >&2; }
die() { say "error: $*"; exit 1; }
# Each daemon by the pid file it writes (munged: /run/munge/munged.pid; the others: slurm.conf).
pid_file() { case "$1" in munged) echo /run/munge/munged.pid ;; *) echo "/run/$1.pid" ;; esac; }
running() { local pid; pid=$(cat "$(pid_file "$1")" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

install_packages() {
  if dpkg -s $PACKAGES >/dev/null 2>&1; then return; fi
  command -v apt-get >/dev/null || die "install $PACKAGES with your system's package manager (Debian/Ubuntu: apt-get)"
  say "installing $PACKAGES"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PACKAGES >/dev/null
}

write_conf() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script: this machine has its own SLURM set-up; use it"
  fi
  local host hardware
  host=$(hostname -s)
  # The node as slurmd sees it (CPUs, sockets, cores, threads, memory): what it checks the configuration against.
  # (Not nproc: it answers OMP_NUM_THREADS when that is set.)
  hardware=$(slurmd -C | head -n 1 | sed 's/^NodeName=[^ ]* //')
  mkdir -p "$(dirname "$CONF")" "$STATE/slurmctld" "$STATE/slurmd" "$LOGS"
  chown slurm:slurm "$STATE/slurmctld" "$LOGS"
  cat >"$CONF.new" <<EOF
$MARK: a one-node cluster for trying the SLURM launcher.
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
# No cgroups: processes found through their parents, not bound to cores.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# CPUs are the consumable resource; memory is checked against the node's size only.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Jobs may requeue themselves (scontrol requeue) when warned of preemption or their time limit.
JobRequeue=1
# Seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or out of time.
KillWait=15
# A finished job stays visible to scontrol this many seconds (there is no accounting database).
MinJobAge=600
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  if [ -f "$CONF" ] && cmp -s "$CONF" "$CONF.new"; then
    rm "$CONF.new"
  else
    mv "$CONF.new" "$CONF"
    # Daemons started with the old file (node sizes change only on a restart) start again with this one.
    stop slurmd
    stop slurmctld
  fi
}

start_munge() {
  running munged && return
  [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; }
  mkdir -p /run/munge && chown munge:munge /run/munge
  runuser -u munge -- /usr/sbin/munged
}

node_idle() { [ "$(sinfo --noheader --nodes "$(hostname -s)" --format %t 2>/dev/null)" = idle ]; }

up() {
  [ "$(id -u)" = 0 ] || die "run as root (sudo make slurm-up): it installs packages and starts system daemons"
  install_packages
  write_conf
  start_munge
  running slurmctld || slurmctld
  running slurmd || slurmd
  local deadline=$((SECONDS + WAIT_S))
  until node_idle; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      sinfo >&2 || true
      tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
      die "the node is not idle after ${WAIT_S} s (logs above)"
    fi
    # A node left down by an earlier unclean stop comes back here.
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  say "up: $(sinfo --noheader --format '%P %D node(s) %t')"
}

stop() {
  local name=$1
  running "$name" || return 0
  kill -TERM "$(cat "$(pid_file "$name")")"
  for _ in $(seq 50); do running "$name" || return 0; sleep 0.2; done
  die "$name did not stop"
}

down() {
  stop slurmd
  stop slurmctld
  stop munged
  say "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) node_idle || { sinfo 2>/dev/null || true; exit 1; } ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
