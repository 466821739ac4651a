#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests that submit real jobs (as root).
#   bash scripts/slurm.sh install  install the packages (apt), start nothing
#   bash scripts/slurm.sh start    install (apt) if needed, start munge, a private MariaDB,
#                                  slurmdbd, slurmctld and slurmd; wait until the node is idle
#   bash scripts/slurm.sh stop     cancel the cluster's jobs, stop the daemons `start` started
#   bash scripts/slurm.sh status   sinfo and squeue
# Idempotent: a second `start` only checks. Daemons already running (a host's own munged) are
# used and left alone. Jobs are tracked with proctrack/linuxproc and no task plugin, so no
# cgroups or systemd are needed (containers). State and logs: $LLMTUNE_SLURM_STATE.
set -euo pipefail

STATE="${LLMTUNE_SLURM_STATE:-/var/lib/llmtune-slurm}"
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARK="# llmtune one-node test cluster (scripts/slurm.sh)"
DB_PORT="${LLMTUNE_SLURM_DB_PORT:-3399}"  # a private MariaDB, off the usual 3306
PARTITION=cpu
HOST="$(hostname -s)"
STARTED="$STATE/started"  # daemons this script started, one name a line, for `stop`
MUNGED_PID=/run/munge/munged.pid  # munged's default; it runs as munge and writes it there

log() { echo "slurm.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

install_packages() {
  local missing=()
  for cmd in munged slurmctld slurmd slurmdbd mariadbd sinfo; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  [ ${#missing[@]} -eq 0 ] && return
  [ "$(id -u)" -eq 0 ] || die "installing SLURM needs root (missing: ${missing[*]})"
  log "installing slurmctld slurmd slurmdbd munge mariadb-server (missing: ${missing[*]})"
  local pkgs=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"$STATE/apt.log" 2>&1; then
    apt-get update -q >>"$STATE/apt.log" 2>&1
    apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"$STATE/apt.log" 2>&1 ||
      die "apt-get install failed; see $STATE/apt.log"
  fi
}

write_configs() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; not touching a real cluster's config"
  fi
  # The node line as slurmd sees this machine (CPUs, sockets, cores, memory), minus UpTime.
  local node
  node="$(slurmd -C | head -1)"
  mkdir -p /etc/slurm "$STATE/ctld" "$STATE/spool"
  cat >"$CONF.new" <<EOF
$MARK; rewritten by every start
ClusterName=llmtune
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# no cgroups in containers: track job processes through /proc, bind no tasks to cores
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
# jobs the partition cannot run are refused at submission instead of pending forever
EnforcePartLimits=ALL
ReturnToService=2
KillWait=30
MinJobAge=600
$node
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=30 DefaultTime=10 State=UP
EOF
  mv "$CONF.new" "$CONF"
  cat >"$DBD_CONF" <<EOF
$MARK; rewritten by every start
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=llmtune-test
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DBD_CONF"
}

running() { # running <pidfile>
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

started() { grep -qx "$1" "$STARTED" 2>/dev/null || echo "$1" >>"$STARTED"; }

wait_for() { # wait_for <seconds> <what> <command...>
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "$what did not come up within ${seconds}s; logs in $STATE"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  [ -f /etc/munge/munge.key ] || runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge
  runuser -u munge -- munged 2>>"$STATE/munged.log"  # pid file: $MUNGED_PID
  started munged
  wait_for 20 munged sh -c 'munge -n | unmunge'
}

# MariaDB's files: its data and, writable by the mysql user, its socket, pid file and log.
MYSQL="$STATE/mysql"
db() { mariadb --socket="$MYSQL/run/mysql.sock" -u root "$@"; }

start_mariadb() {
  running "$MYSQL/run/mysql.pid" && return
  if [ ! -d "$MYSQL/data/mysql" ]; then
    mkdir -p "$MYSQL/data" "$MYSQL/run" && chown -R mysql:mysql "$MYSQL"
    mariadb-install-db --user=mysql --datadir="$MYSQL/data" --skip-test-db \
      --auth-root-authentication-method=socket >"$MYSQL/install.log" 2>&1
  fi
  # --no-defaults: the host's own MariaDB config (datadir, port, socket) stays out of it
  setsid mariadbd --no-defaults --user=mysql --datadir="$MYSQL/data" \
    --socket="$MYSQL/run/mysql.sock" --pid-file="$MYSQL/run/mysql.pid" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --innodb-buffer-pool-size=64M --log-error="$MYSQL/run/mysql.log" \
    </dev/null >/dev/null 2>&1 &
  started mariadb
  wait_for 60 MariaDB db -e "SELECT 1"
  db -e "CREATE USER IF NOT EXISTS 'slurm'@'%' IDENTIFIED BY 'llmtune-test';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'%';"
}

start_slurm_daemons() {
  if ! running "$STATE/slurmdbd.pid"; then
    slurmdbd && started slurmdbd
    wait_for 60 slurmdbd sacctmgr -n show cluster
  fi
  sacctmgr -i -Q add cluster llmtune >/dev/null 2>&1 || true  # already there: fine
  if ! running "$STATE/slurmctld.pid"; then
    slurmctld && started slurmctld
    wait_for 60 slurmctld scontrol ping
  fi
  if ! running "$STATE/slurmd.pid"; then
    slurmd && started slurmd
  fi
}

wait_idle() {
  for _ in $(seq 300); do
    local state
    state="$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)"
    case "$state" in
      idle | mixed | allocated) return ;;
      down* | drain* | fail*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.2
  done
  die "node $HOST is not idle after 60s (sinfo: $(sinfo -h -n "$HOST" -o %T)); see $STATE/*.log"
}

start() {
  [ "$(id -u)" -eq 0 ] || die "run as root: the one-node cluster's daemons and jobs run as root"
  mkdir -p "$STATE"
  install_packages
  write_configs
  start_munge
  start_mariadb
  start_slurm_daemons
  wait_idle
  log "ready: node $HOST idle in partition $PARTITION ($(sinfo -h -o '%c CPUs, %m MB'))"
}

stop_daemon() { # stop_daemon <name> <pidfile>
  grep -qx "$1" "$STARTED" 2>/dev/null || return 0
  if running "$2"; then
    local pid
    pid="$(cat "$2")"
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  else
    log "$1: no live process in $2; nothing to stop"
  fi
  sed -i "/^$1\$/d" "$STARTED"
}

stop() {
  if command -v scancel >/dev/null && [ -f "$CONF" ] && grep -qF "$MARK" "$CONF"; then
    scancel --partition="$PARTITION" 2>/dev/null || true
  fi
  stop_daemon slurmd "$STATE/slurmd.pid"
  stop_daemon slurmctld "$STATE/slurmctld.pid"
  stop_daemon slurmdbd "$STATE/slurmdbd.pid"
  stop_daemon mariadb "$MYSQL/run/mysql.pid"
  stop_daemon munged "$MUNGED_PID"
  log "stopped"
}

case "${1:-}" in
  install) mkdir -p "$STATE" && install_packages ;;
  start) start ;;
  stop) stop ;;
  status) sinfo && squeue ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
