#!/usr/bin/env bash
# Stop the local SLURM test cluster started by scripts/slurm/up.sh:
# slurmd x2, slurmctld, slurmdbd, MariaDB and munge, each by its pid file.
# Idempotent: stopping a cluster that is not running is a no-op.
#   --purge   also delete the state directory (jobs, accounting database, logs).
set -Euo pipefail

DIR="${REFITCTL_SLURM_DIR:-/var/tmp/refitctl-slurm}"
RUN="$DIR/run"
PURGE=0
for a in "$@"; do
    case "$a" in
        --purge) PURGE=1 ;;
        -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
        *) echo "[slurm-down] unknown argument: $a" >&2; exit 2 ;;
    esac
done

say() { echo "[slurm-down] $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then exec sudo -E bash "$0" "$@"; fi
    echo "[slurm-down] ERROR: must run as root" >&2; exit 1
fi

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
    if ! pid_alive "$1"; then rm -f "$1"; return 0; fi
    pid=$(cat "$1")
    say "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 150); do proc_alive "$pid" || break; sleep 0.2; done
    if proc_alive "$pid"; then
        say "$2 (pid $pid) ignored SIGTERM for 30s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

stopped_any=0
for f in "$RUN"/slurmd-*.pid "$RUN/slurmctld.pid" "$RUN/slurmdbd.pid" "$DIR/mariadb/mariadbd.pid" "$RUN/munged.pid"; do
    pid_alive "$f" && stopped_any=1
done

# Cancel jobs first so that no job steps outlive their slurmd.
if pid_alive "$RUN/slurmctld.pid" && command -v squeue >/dev/null; then
    if [ -n "$(timeout 10 squeue -h -o %i 2>/dev/null)" ]; then
        say "cancelling jobs"
        timeout 10 scancel --full --partition=debug >/dev/null 2>&1 || true
        for i in $(seq 1 20); do
            [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

for f in "$RUN"/slurmd-*.pid; do
    [ -e "$f" ] || continue
    n=${f##*/slurmd-}; n=${n%.pid}
    stop_pidfile "$f" "slurmd $n"
done
stop_pidfile "$RUN/slurmctld.pid" slurmctld
stop_pidfile "$RUN/slurmdbd.pid" slurmdbd
stop_pidfile "$DIR/mariadb/mariadbd.pid" mariadbd
stop_pidfile "$RUN/munged.pid" munged

if [ $PURGE -eq 1 ] && [ -d "$DIR" ]; then
    if [ -e "$DIR/.refitctl-slurm" ]; then
        say "deleting $DIR"
        rm -rf -- "$DIR"
    else
        say "not deleting $DIR: it lacks the marker file .refitctl-slurm"
    fi
fi

if [ $stopped_any -eq 1 ]; then echo "SLURM down (dir $DIR)"; else echo "SLURM down: nothing was running (dir $DIR)"; fi
