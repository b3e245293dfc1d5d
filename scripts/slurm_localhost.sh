#!/usr/bin/env bash
# A single-node Slurm on this machine, for trying vlpbench's Slurm executor (and for CI).
#
#   sudo scripts/slurm_localhost.sh install   # Debian/Ubuntu: slurmctld slurmd slurm-client slurmdbd munge mariadb
#   sudo scripts/slurm_localhost.sh start     # configure and start munged, mariadb, slurmdbd, slurmctld, slurmd
#   sudo scripts/slurm_localhost.sh stop
#
# No systemd and no cgroups (proctrack/linuxproc, task/none); everything binds to 127.0.0.1; the
# daemons run as root. Accounting (slurmdbd on a local MariaDB) is on because submitit reads job
# states through sacct. The scheduler settings cut job latency to about a second and a requeue
# cycle to about 25 s. State lives in $SLURM_LOCAL_STATE (default /var/tmp/vlpbench-slurm). Each
# start is a fresh cluster instance: job ids restart at 1, so the accounting database is emptied
# too (sacct would otherwise report an earlier instance's job 1 as this one's).
set -euo pipefail

STATE=${SLURM_LOCAL_STATE:-/var/tmp/vlpbench-slurm}
CLUSTER=${SLURM_LOCAL_CLUSTER:-vlpbench}
CONF_DIR=/etc/slurm
DB_PASS=vlpbench-local

say() { printf '[slurm_localhost] %s\n' "$*"; }

install_packages() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client slurmdbd munge mariadb-server >/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    for _ in $(seq 1 $((limit * 5))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    say "gave up waiting for $what after ${limit}s"; return 1
}

start_munge() {
    mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key
    pgrep -x munged >/dev/null || su -s /bin/sh munge -c "munged" 2>/dev/null || munged --force
    wait_for 10 munged munge -n
}

start_mariadb() {
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    if ! pgrep -x mariadbd >/dev/null && ! pgrep -x mysqld >/dev/null; then
        (mysqld_safe --bind-address=127.0.0.1 >/dev/null 2>&1 &)
    fi
    wait_for 30 mariadb mysqladmin ping
    mysql -u root <<SQL
DROP DATABASE IF EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
}

write_configs() {
    mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$STATE/log"
    local node
    node=$(slurmd -C | head -n 1 | sed -E 's/NodeName=[^ ]+/NodeName=localhost/')
    cat > "$CONF_DIR/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
MinJobAge=600
KillWait=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
$node
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    cat > "$CONF_DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
EOF
    chmod 600 "$CONF_DIR/slurmdbd.conf"
}

start() {
    local began=$SECONDS
    command -v slurmctld >/dev/null || { say "Slurm is not installed: run '$0 install' first"; exit 3; }
    stop_daemons
    rm -rf "$STATE"
    start_munge
    start_mariadb
    write_configs
    slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    slurmctld -c
    wait_for 30 slurmctld scontrol ping
    slurmd
    wait_for 30 "the node" sh -c "sinfo -h -o %T | grep -qE '^(idle|mixed|allocated)'"
    say "single-node Slurm up in $((SECONDS - began)) s (cluster $CLUSTER, state in $STATE)"
}

stop_daemons() {
    for daemon in slurmd slurmctld slurmdbd; do
        pkill -x "$daemon" 2>/dev/null || true
    done
    for daemon in slurmd slurmctld slurmdbd; do
        wait_for 15 "$daemon to stop" sh -c "! pgrep -x $daemon" || pkill -9 -x "$daemon" || true
    done
}

case "${1:-}" in
    install) install_packages ;;
    start) start ;;
    stop) stop_daemons; say "stopped slurmd, slurmctld, slurmdbd (munged and mariadb keep running)" ;;
    *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
