#!/usr/bin/env bash
# Stop the local SLURM cluster that slurm/cluster/start.sh started: slurmd, slurmctld, slurmdbd, MariaDB, munged.
# Idempotent: what is not running is skipped. State (job history, accounting database) is kept for the next start.
set -euo pipefail
T0=$(date +%s.%N)
say() { printf '[slurm-stop] %s\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "[slurm-stop] ERROR: run as root" >&2; exit 1; }

exec 9>/run/lock/fourm-bench-slurm.lock
flock -w 300 9 || { echo "[slurm-stop] ERROR: another start.sh/stop.sh holds /run/lock/fourm-bench-slurm.lock" >&2; exit 1; }

stop_pidfile() {  # stop_pidfile NAME PIDFILE: SIGTERM the daemon named in PIDFILE, wait up to 30 s, then SIGKILL
  local name=$1 pidfile=$2 pid i
  pid=$(cat "$pidfile" 2>/dev/null) || return 0
  kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
  say "stopping $name (pid $pid)"
  kill "$pid"
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.3; done
  say "$name did not exit after 30 s: SIGKILL"
  kill -9 "$pid" 2>/dev/null || true
}

stop_pidfile slurmd /run/slurm/slurmd.pid
stop_pidfile slurmctld /run/slurm/slurmctld.pid
stop_pidfile slurmdbd /run/slurm/slurmdbd.pid
if mysqladmin ping >/dev/null 2>&1; then
  say "stopping MariaDB"
  mysqladmin shutdown   # mysqld_safe exits when the server shuts down cleanly
fi
stop_pidfile munged /run/munge/munged.pid
say "stopped ($(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')s)"
