#!/usr/bin/env bash
# Bring up a real local SLURM 22.05 test cluster on this one machine:
#   munge + MariaDB + slurmdbd + slurmctld + two slurmd (node1, node2),
#   each node with 16 CPUs and 8 fake GPUs (gres gpu:8: a seed config fits one node), one partition "debug".
# Idempotent: a second run only checks that everything answers (about a second).
# No systemd needed; every daemon is started directly and tracked by a pid file.
# See scripts/slurm/README.md. Stop it with scripts/slurm/down.sh.
set -Eeuo pipefail

DIR="${REFITCTL_SLURM_DIR:-/var/tmp/refitctl-slurm}"
WAIT_S="${REFITCTL_SLURM_WAIT:-120}"

CLUSTER=refitctl
PARTITION=debug
NODES=(node1 node2)
NODE_PORTS=(16821 16822)
CTLD_PORT=16817
DBD_PORT=16819
DB_PORT=16306
NODE_CPUS=16
NODE_GPUS=8
NODE_MEM_MB=8192
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=refitctl-slurm-local   # local-only test database bound to 127.0.0.1
CONF_DIR=/etc/slurm
PACKAGES=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)

RUN="$DIR/run"
LOG="$DIR/log"
MDB="$DIR/mariadb"              # owned by the mysql user: data, socket, pid, log
DB_SOCK="$MDB/mysqld.sock"
T0=$(date +%s.%N)

export SLURM_CONF="$CONF_DIR/slurm.conf"
export DEBIAN_FRONTEND=noninteractive

say() { echo "[slurm-up] $*" >&2; }

# fail MESSAGE [LOGFILE...]: print the message and the tail of each log, exit 1.
fail() {
    local msg=$1; shift
    echo "[slurm-up] ERROR: $msg" >&2
    local f
    for f in "$@"; do
        if [ -f "$f" ]; then
            echo "----- last 40 lines of $f -----" >&2
            tail -n 40 "$f" >&2 || true
            echo "----- end of $f -----" >&2
        fi
    done
    exit 1
}
trap 'rc=$?; echo "[slurm-up] ERROR: command failed (exit $rc) at line $LINENO: $BASH_COMMAND" >&2; exit $rc' ERR

# wait_until SECONDS COMMAND...: poll COMMAND every 0.5 s until it succeeds.
wait_until() {
    local limit=$1; shift
    local end=$(( $(date +%s) + limit ))
    while ! "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.5
    done
}

# proc_alive PID: running and not a zombie (PID 1 here reaps orphans late, so a
# daemon that has exited can linger as a zombie for a second or two).
proc_alive() {
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$st" ] && [ "$st" != Z ]
}

pid_alive() {   # pid_alive PIDFILE: its pid runs and is the daemon the file is named after
    local pid want    # (a stale file's pid may have been reused by another process)
    [ -s "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    want=${1##*/}; want=${want%.pid}; want=${want%%-*}
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$want" ] && proc_alive "$pid"
}

stop_pidfile() {   # stop_pidfile PIDFILE NAME
    local pid i
    pid_alive "$1" || { rm -f "$1"; return 0; }
    pid=$(cat "$1")
    say "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 150); do proc_alive "$pid" || break; sleep 0.2; done
    proc_alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$1"
}

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then exec sudo -E bash "$0" "$@"; fi
    fail "must run as root (it installs packages and writes /etc/slurm, /etc/hosts)"
fi

# ---------------------------------------------------------------- packages
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing: ${missing[*]}"
    # Keep package scripts from starting daemons with their default configs.
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt_log=$(mktemp /tmp/refitctl-slurm-apt.XXXXXX)
    need_update=0
    for p in "${missing[@]}"; do
        apt-cache show --no-all-versions "$p" >/dev/null 2>&1 || { need_update=1; break; }
    done
    if [ $need_update -eq 1 ]; then
        say "apt-get update (package lists lack ${p})"
        apt-get update >>"$apt_log" 2>&1 || { [ $made_policy -eq 0 ] || rm -f /usr/sbin/policy-rc.d; fail "apt-get update failed" "$apt_log"; }
    fi
    apt_install() { apt-get install -y --no-install-recommends "${missing[@]}" >>"$apt_log" 2>&1; }
    if ! apt_install; then
        say "apt-get install failed; retrying after apt-get update"
        if ! { apt-get update >>"$apt_log" 2>&1 && apt_install; }; then
            [ $made_policy -eq 0 ] || rm -f /usr/sbin/policy-rc.d
            fail "apt-get install ${missing[*]} failed" "$apt_log"
        fi
    fi
    [ $made_policy -eq 0 ] || rm -f /usr/sbin/policy-rc.d
    rm -f "$apt_log"
fi

# ---------------------------------------------------------------- dirs, hosts
# A cluster still running from another REFITCTL_SLURM_DIR holds the same ports.
if [ -f "$CONF_DIR/slurm.conf" ] && grep -q 'refitctl scripts/slurm/up.sh' "$CONF_DIR/slurm.conf"; then
    old_dir=$(sed -n 's/^StateSaveLocation=\(.*\)\/state$/\1/p' "$CONF_DIR/slurm.conf")
    if [ -n "$old_dir" ] && [ "$old_dir" != "$DIR" ]; then
        for f in "$old_dir"/run/*.pid "$old_dir/mariadb/mariadbd.pid"; do
            if pid_alive "$f"; then
                fail "a cluster from REFITCTL_SLURM_DIR=$old_dir is still running; stop it first: REFITCTL_SLURM_DIR=$old_dir bash scripts/slurm/down.sh"
            fi
        done
    fi
fi
mkdir -p "$DIR" "$RUN" "$LOG" "$DIR/state" "$DIR/dev" "$MDB"
chmod 755 "$DIR"
touch "$DIR/.refitctl-slurm"    # marker: down.sh --purge only deletes a dir that has it
for n in "${NODES[@]}"; do
    mkdir -p "$DIR/spool/$n" "$DIR/dev/$n"
    for i in $(seq 0 $((NODE_GPUS - 1))); do
        dev="$DIR/dev/$n/gpu$i"
        # Fake GPU: a character device like /dev/null (major 1, minor 3).
        [ -c "$dev" ] || { rm -f "$dev"; mknod "$dev" c 1 3; chmod 666 "$dev"; }
    done
done
[ -c "$DIR/dev/node1/gpu0" ] || fail "could not create character devices under $DIR/dev (filesystem mounted nodev?)"

HOST=$(hostname -s 2>/dev/null || hostname)
[ -n "$HOST" ] || fail "empty hostname"
if ! getent hosts "$HOST" >/dev/null; then
    say "adding '$HOST' to /etc/hosts"
    echo "127.0.0.1 $HOST" >> /etc/hosts
fi
for n in "${NODES[@]}"; do
    # submitit/torch use node names as MASTER_ADDR: they must resolve.
    if ! grep -Eq "^127\.0\.0\.1([[:space:]].*)?[[:space:]]$n([[:space:]]|\$)" /etc/hosts; then
        say "adding '$n' to /etc/hosts"
        echo "127.0.0.1 $n" >> /etc/hosts
    fi
done

# ---------------------------------------------------------------- configs
mkdir -p "$CONF_DIR"
tmp=$(mktemp -d /tmp/refitctl-slurm-conf.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

{
cat <<EOF
# Written by refitctl scripts/slurm/up.sh: a local SLURM test cluster. Edits are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
GresTypes=gpu
# The nodes declare more CPUs than the machine has.
SlurmdParameters=config_overrides
ReturnToService=2
SlurmdTimeout=15
InactiveLimit=0
# A job past its --time limit ends TIMEOUT quickly.
KillWait=2
OverTimeLimit=0
MinJobAge=30
# Preemption: a job with --qos=high preempts (requeues) normal jobs; SIGTERM first.
PreemptType=preempt/qos
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
JobRequeue=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
EOF
for idx in "${!NODES[@]}"; do
    echo "NodeName=${NODES[$idx]} NodeHostname=$HOST NodeAddr=127.0.0.1 Port=${NODE_PORTS[$idx]} CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB Gres=gpu:$NODE_GPUS State=UNKNOWN"
done
echo "PartitionName=$PARTITION Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP"
} > "$tmp/slurm.conf"

{
echo "# Written by refitctl scripts/slurm/up.sh"
echo "AutoDetect=off"
for n in "${NODES[@]}"; do
    echo "NodeName=$n Name=gpu File=$DIR/dev/$n/gpu[0-$((NODE_GPUS - 1))]"
done
} > "$tmp/gres.conf"

cat > "$tmp/slurmdbd.conf" <<EOF
# Written by refitctl scripts/slurm/up.sh
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF

install_conf() {   # install_conf NAME MODE -> returns 0 if it changed
    if cmp -s "$tmp/$1" "$CONF_DIR/$1"; then return 1; fi
    install -m "$2" -o root -g root "$tmp/$1" "$CONF_DIR/$1"
    say "wrote $CONF_DIR/$1"
}
ctl_conf_changed=0; dbd_conf_changed=0
install_conf slurm.conf 644 && ctl_conf_changed=1
install_conf gres.conf 644 && ctl_conf_changed=1
install_conf slurmdbd.conf 600 && dbd_conf_changed=1

# ---------------------------------------------------------------- munge
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
    say "starting munged"
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 \
            || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge
    chmod 755 /run/munge
    stop_pidfile "$RUN/munged.pid" munged
    munged --force --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log" >>"$LOG/munged.out" 2>&1 \
        || fail "munged did not start" "$LOG/munged.out" "$LOG/munged.log"
    wait_until 20 munge_ok || fail "munge does not answer (munge -n | unmunge)" "$LOG/munged.out" "$LOG/munged.log"
fi

# ---------------------------------------------------------------- MariaDB
# A private instance (own data dir, socket, port and config), not the system's /var/lib/mysql.
cat > "$tmp/my.cnf" <<EOF
# Written by refitctl scripts/slurm/up.sh
[mysqld]
user=mysql
datadir=$MDB/data
socket=$DB_SOCK
port=$DB_PORT
bind-address=127.0.0.1
skip-name-resolve
pid-file=$MDB/mariadbd.pid
log-error=$MDB/mariadb.log
# slurmdbd warns below these.
innodb_buffer_pool_size=1024M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
EOF
db() { mariadb --no-defaults --protocol=socket --socket="$DB_SOCK" -uroot "$@"; }
db_ok() { db -e 'SELECT 1' >/dev/null 2>&1; }
chown mysql:mysql "$MDB"
chmod 750 "$MDB"
if ! cmp -s "$tmp/my.cnf" "$MDB/my.cnf"; then
    install -m 644 -o root -g root "$tmp/my.cnf" "$MDB/my.cnf"
    if pid_alive "$MDB/mariadbd.pid"; then
        stop_pidfile "$RUN/slurmdbd.pid" slurmdbd     # restarted below, after MariaDB
        stop_pidfile "$MDB/mariadbd.pid" mariadbd
    fi
fi
if ! db_ok; then
    if [ ! -d "$MDB/data/mysql" ]; then
        say "initialising MariaDB data dir $MDB/data"
        rm -rf "$MDB/data"
        mariadb-install-db --no-defaults --user=mysql --datadir="$MDB/data" \
            --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
            || fail "mariadb-install-db failed" "$LOG/mariadb-install.log"
    fi
    stop_pidfile "$MDB/mariadbd.pid" mariadbd
    say "starting mariadbd on 127.0.0.1:$DB_PORT"
    setsid mariadbd --defaults-file="$MDB/my.cnf" </dev/null >>"$LOG/mariadbd.out" 2>&1 &
    wait_until 60 db_ok || fail "MariaDB does not answer on $DB_SOCK" "$LOG/mariadbd.out" "$MDB/mariadb.log"
fi
db <<EOF || fail "creating the accounting database/user failed" "$MDB/mariadb.log"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
EOF

# ---------------------------------------------------------------- slurmdbd
dbd_ok() { timeout 10 sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }
if [ $dbd_conf_changed -eq 1 ] && pid_alive "$RUN/slurmdbd.pid"; then
    stop_pidfile "$RUN/slurmdbd.pid" slurmdbd
fi
if ! pid_alive "$RUN/slurmdbd.pid" || ! dbd_ok; then
    stop_pidfile "$RUN/slurmdbd.pid" slurmdbd
    say "starting slurmdbd on port $DBD_PORT"
    slurmdbd >>"$LOG/slurmdbd.out" 2>&1 || fail "slurmdbd did not start" "$LOG/slurmdbd.out" "$LOG/slurmdbd.log"
    wait_until 60 dbd_ok || fail "slurmdbd does not answer (sacctmgr list cluster)" "$LOG/slurmdbd.out" "$LOG/slurmdbd.log"
fi
if ! timeout 10 sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    say "registering cluster $CLUSTER"
    timeout 30 sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr add cluster failed" "$LOG/slurmdbd.log"
fi
if ! timeout 10 sacctmgr -n -P list qos format=name | grep -qx high; then
    timeout 30 sacctmgr -i add qos high Priority=100 Preempt=normal PreemptMode=requeue >/dev/null \
        || fail "sacctmgr add qos high failed" "$LOG/slurmdbd.log"
fi

# ---------------------------------------------------------------- slurmctld
ctld_ok() { timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP'; }
if [ $ctl_conf_changed -eq 1 ]; then
    # Node lines change only with a restart (scontrol reconfigure is not enough).
    for n in "${NODES[@]}"; do stop_pidfile "$RUN/slurmd-$n.pid" "slurmd $n"; done
    stop_pidfile "$RUN/slurmctld.pid" slurmctld
fi
if ! pid_alive "$RUN/slurmctld.pid" || ! ctld_ok; then
    stop_pidfile "$RUN/slurmctld.pid" slurmctld
    say "starting slurmctld on port $CTLD_PORT"
    slurmctld >>"$LOG/slurmctld.out" 2>&1 || fail "slurmctld did not start" "$LOG/slurmctld.out" "$LOG/slurmctld.log"
    wait_until 60 ctld_ok || fail "slurmctld does not answer (scontrol ping)" "$LOG/slurmctld.out" "$LOG/slurmctld.log"
fi

# ---------------------------------------------------------------- slurmd x2
for n in "${NODES[@]}"; do
    if ! pid_alive "$RUN/slurmd-$n.pid"; then
        say "starting slurmd $n"
        slurmd -N "$n" >>"$LOG/slurmd-$n.out" 2>&1 || fail "slurmd $n did not start" "$LOG/slurmd-$n.out" "$LOG/slurmd-$n.log"
    fi
done

# ---------------------------------------------------------------- wait for nodes
node_state() { sinfo -h -N -n "$1" -o '%t' 2>/dev/null | head -n1; }
nodes_usable() {
    local n s
    for n in "${NODES[@]}"; do
        s=$(node_state "$n")
        [[ "$s" =~ ^(idle|mix|alloc|comp|plnd)$ ]] || return 1
    done
}
end=$(( $(date +%s) + WAIT_S ))
resumed=""
until nodes_usable; do
    for n in "${NODES[@]}"; do
        pid_alive "$RUN/slurmd-$n.pid" || fail "slurmd $n died" "$LOG/slurmd-$n.out" "$LOG/slurmd-$n.log"
        s=$(node_state "$n")
        # A node left drained/down by an earlier run comes back with a resume.
        if [[ "$s" =~ ^(drain|drng|down|fail|inval)$ ]] && [[ " $resumed " != *" $n "* ]]; then
            say "node $n is '$s'; resuming it"
            scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true
            resumed+=" $n"
        fi
    done
    if [ "$(date +%s)" -ge "$end" ]; then
        sinfo -N -l >&2 || true
        scontrol show node >&2 || true
        fail "nodes not idle after ${WAIT_S}s" "$LOG/slurmctld.log" "$LOG/slurmd-node1.log" "$LOG/slurmd-node2.log"
    fi
    sleep 0.5
done

states=$(for n in "${NODES[@]}"; do printf '%s=%s ' "$n" "$(node_state "$n")"; done)
elapsed=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
echo "SLURM up: cluster=$CLUSTER partition=$PARTITION nodes: ${states% } (${NODE_CPUS} CPUs, gres gpu:${NODE_GPUS}, ${NODE_MEM_MB} MB each) slurmctld=127.0.0.1:$CTLD_PORT slurmdbd=:$DBD_PORT mariadb=:$DB_PORT conf=$SLURM_CONF dir=$DIR (${elapsed}s)"
