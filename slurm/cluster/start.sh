#!/usr/bin/env bash
# Start a real one-node SLURM cluster (munge, MariaDB, slurmdbd, slurmctld, slurmd) on this machine, as root.
# Idempotent: when the node is already idle and accounting answers, it returns 0 at once.
# Facts behind each step: docs/cluster.md. Stop with slurm/cluster/stop.sh.
#
# Environment knobs (defaults in brackets):
#   FOURM_SLURM_CLUSTER [fourm]   cluster name        FOURM_SLURM_PARTITION [dev]  default partition
#   FOURM_SLURM_REQUEUE_DELAY [20] seconds a requeued job waits before it runs again (SLURM's cred_expire; default 120)
#   FOURM_SLURM_MAX_ARRAY [1001]  MaxArraySize
set -euo pipefail

CLUSTER=${FOURM_SLURM_CLUSTER:-fourm}
PARTITION=${FOURM_SLURM_PARTITION:-dev}
REQUEUE_DELAY=${FOURM_SLURM_REQUEUE_DELAY:-20}
MAX_ARRAY=${FOURM_SLURM_MAX_ARRAY:-1001}
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=fourm-bench-local   # a throwaway, localhost-only database
HOST=$(hostname -s)
LOG_DIR=/var/log/slurm
T0=$(date +%s.%N)

say() { printf '[slurm-start] %s\n' "$*"; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
die() {  # die MESSAGE [LOGFILE...]: one clear message plus the tail of the logs that explain it
  local msg=$1; shift
  printf '[slurm-start] ERROR: %s\n' "$msg" >&2
  for f in "$@"; do
    [ -f "$f" ] && { printf -- '--- last lines of %s ---\n' "$f" >&2; tail -n 25 "$f" >&2; }
  done
  exit 1
}
wait_for() {  # wait_for SECONDS COMMAND...: poll until COMMAND succeeds
  local limit=$1; shift
  local end=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -ge "$end" ] && return 1
    sleep 0.3
  done
}
# "up" = the node takes jobs: idle, or busy with some (mix/alloc/comp); a trailing * (not responding), drain etc. are not up
node_idle() { case "$(timeout 5 sinfo -h -n "$HOST" -o %t 2>/dev/null | head -n1)" in idle|mix|alloc|comp) return 0 ;; *) return 1 ;; esac; }
accounting_up() { timeout 10 sacct -n -X -S now-1minutes >/dev/null 2>&1; }
cluster_up() { node_idle && accounting_up; }

[ "$(id -u)" = 0 ] || die "run as root (it writes /etc/slurm, /etc/munge, /var/lib/mysql and starts system daemons)"
missing=()
for bin in /usr/sbin/munged /usr/bin/mysqld_safe /usr/sbin/slurmdbd /usr/sbin/slurmctld /usr/sbin/slurmd; do
  [ -x "$bin" ] || missing+=("$bin")
done
[ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]}; install the Debian packages: apt-get install slurm-wlm slurmdbd munge mariadb-server (or run 'make setup' as root)"

# Two test runs starting the cluster at once must not both write configs and start daemons.
# Every daemon below is started with 9>&-: an inherited lock fd would hold this lock for the daemon's life.
exec 9>/run/lock/fourm-bench-slurm.lock
flock -w 300 9 || die "another start.sh/stop.sh holds /run/lock/fourm-bench-slurm.lock for over 5 min"

CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo)
REAL_MEM=$(( MEM_MB * 95 / 100 ))   # a bit below the total: more than the node has would make it INVALID
slurm_conf() {
cat <<CONF
# written by slurm/cluster/start.sh
ClusterName=$CLUSTER
SlurmctldHost=$HOST
AuthType=auth/munge
AuthInfo=cred_expire=$REQUEUE_DELAY
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
MaxArraySize=$MAX_ARRAY
MaxJobCount=100000
MinJobAge=300
# seconds between SIGTERM (ignored by submitit workers) and SIGKILL when a job is cancelled or requeued
KillWait=5
# no DefMemPerCPU: a job that asks for no memory gets the whole node, which is honest on one node
NodeName=$HOST CPUs=$CPUS RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
}

if cluster_up && slurm_conf | cmp -s - /etc/slurm/slurm.conf; then
  say "already up: node $HOST up in partition $PARTITION, accounting answers ($(elapsed)s)"
  exit 0
fi

# 1. munge ----------------------------------------------------------------------------------------
mkdir -p /var/run/munge /var/lib/munge /var/log/munge /etc/munge
chown munge:munge /var/run/munge /var/lib/munge /var/log/munge /etc/munge
chmod 755 /var/run/munge
if [ "$(stat -c %s /etc/munge/munge.key 2>/dev/null || echo 0)" != 1024 ]; then
  # only when no 1024-byte key exists: replacing the key under running daemons would break them
  say "writing a new 1024-byte /etc/munge/munge.key"
  old_pid=$(cat /var/run/munge/munged.pid 2>/dev/null || true)
  [ -n "$old_pid" ] && kill "$old_pid" 2>/dev/null || true
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
if ! (munge -n | unmunge) >/dev/null 2>&1; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged --force 9>&-
  wait_for 15 sh -c 'munge -n | unmunge' || die "munged did not come up" /var/log/munge/munged.log
fi

# 2. MariaDB --------------------------------------------------------------------------------------
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if [ ! -d /var/lib/mysql/mysql ]; then
  say "initialising the MariaDB data directory"
  mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/var/log/mysql-install.log 2>&1 \
    || die "mariadb-install-db failed" /var/log/mysql-install.log
fi
if ! mysqladmin ping >/dev/null 2>&1; then
  say "starting MariaDB"
  # setsid: the server must outlive the shell (and test run) that started it
  setsid -f mysqld_safe --user=mysql >/var/log/mysqld_safe.out 2>&1 </dev/null 9>&-
  wait_for 60 mysqladmin ping || die "MariaDB did not answer 'mysqladmin ping' within 60 s" /var/log/mysqld_safe.out /var/log/mysql/error.log /var/lib/mysql/"$HOST".err
fi
mysql -u root <<SQL || die "could not create database $DB_NAME / user $DB_USER in MariaDB"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL

# 3. slurm.conf (before slurmdbd: sacctmgr reads it to find slurmdbd) -----------------------
mkdir -p /etc/slurm "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd /run/slurm
write_conf() {  # write_conf PATH MODE: stdin -> PATH atomically; prints "changed" when the content differs
  local path=$1 mode=$2 tmp
  tmp=$(mktemp "$path.XXXXXX")
  cat >"$tmp"; chmod "$mode" "$tmp"
  if cmp -s "$tmp" "$path"; then rm -f "$tmp"; else mv -f "$tmp" "$path"; echo changed; fi
}
conf_changed=$(slurm_conf | write_conf /etc/slurm/slurm.conf 644)
pid_of() { local p; p=$(cat "/run/slurm/$1.pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null && echo "$p"; }
if [ -n "$conf_changed" ]; then
  for d in slurmd slurmctld; do
    if p=$(pid_of $d); then say "slurm.conf changed: restarting $d"; kill "$p"; wait_for 20 sh -c "! kill -0 $p"; fi
  done
fi

# 4. slurmdbd -------------------------------------------------------------------------------------
dbd_changed=$(write_conf /etc/slurm/slurmdbd.conf 600 <<CONF
# written by slurm/cluster/start.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
CONF
)
dbd_pid() { local p; p=$(cat /run/slurm/slurmdbd.pid 2>/dev/null) && kill -0 "$p" 2>/dev/null && echo "$p"; }
if [ -n "$dbd_changed" ] && p=$(dbd_pid); then say "slurmdbd.conf changed: restarting slurmdbd"; kill "$p"; wait_for 20 sh -c "! kill -0 $p"; fi
if ! dbd_pid >/dev/null; then
  say "starting slurmdbd"
  /usr/sbin/slurmdbd 9>&- || die "slurmdbd failed to start" "$LOG_DIR/slurmdbd.log"
fi
wait_for 60 sacctmgr -n list cluster || die "slurmdbd does not answer 'sacctmgr list cluster' within 60 s" "$LOG_DIR/slurmdbd.log"
if [ -z "$(sacctmgr -n -P list cluster "$CLUSTER" format=Cluster 2>/dev/null)" ]; then
  say "registering cluster $CLUSTER in accounting"
  sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster $CLUSTER failed" "$LOG_DIR/slurmdbd.log"
fi

# 5. slurmctld, slurmd ----------------------------------------------------------------------------
if ! pid_of slurmctld >/dev/null; then
  say "starting slurmctld"
  /usr/sbin/slurmctld 9>&- || die "slurmctld failed to start" "$LOG_DIR/slurmctld.log"
fi
wait_for 30 scontrol ping || die "slurmctld does not answer 'scontrol ping' within 30 s" "$LOG_DIR/slurmctld.log"
if ! pid_of slurmd >/dev/null; then
  say "starting slurmd"
  /usr/sbin/slurmd 9>&- || die "slurmd failed to start" "$LOG_DIR/slurmd.log"
fi
if ! wait_for 30 node_idle; then
  # a node left DOWN/DRAIN by an earlier run (e.g. killed slurmd) is brought back once
  scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
  wait_for 15 node_idle || die "node $HOST is not idle after 45 s: $(sinfo -h -N -o '%N %t %E' 2>&1)" "$LOG_DIR/slurmd.log" "$LOG_DIR/slurmctld.log"
fi
wait_for 30 accounting_up || die "sacct does not answer within 30 s" "$LOG_DIR/slurmdbd.log" "$LOG_DIR/slurmctld.log"
say "up: cluster $CLUSTER, partition $PARTITION, node $HOST CPUs=$CPUS RealMemory=${REAL_MEM}MB, requeue delay ${REQUEUE_DELAY}s ($(elapsed)s)"
