#!/usr/bin/env bash
# Benchmark: direct PostgreSQL vs PgBouncer vs tenant-proxy (session and transaction mode), in one
# run on one machine. Builds the proxy in release into .build-bench (not .build), starts a
# throwaway PostgreSQL, PgBouncer and two tenant-proxy processes on free loopback ports, runs
# pgbench against each, measures idle memory per client, prints one markdown table and writes it
# to .build-bench/bench-results.md (or $BENCH_OUT). Everything it starts is stopped on exit,
# Ctrl-C included.
#
# Settings (environment variables):
#   BENCH_QUICK=1          validation run: -T 3, clients 1 and 20, fewer tpcb-like/RLS cells
#   BENCH_SECONDS=10       pgbench -T per cell (3 in quick mode)
#   BENCH_CLIENTS=1,20,100 client counts (1,20 in quick mode)
#   BENCH_PROTOCOLS=simple,extended,prepared
#   BENCH_SCRIPTS=select-only,tpcb-like  (none: only the -C and rls-select rows)
#   BENCH_TARGETS=         only these of direct,proxy-session,proxy-tx (pgbouncer always runs)
#   BENCH_TENANTS=10       tenants, and pgbench processes per cell
#   BENCH_SCALE=10         pgbench -i -s
#   BENCH_POOL_SIZE=20     upstream pool size of PgBouncer and tenant-proxy (transaction mode)
#   BENCH_IDLE=1000        idle client connections for the memory measurement (0 = skip)
#   BENCH_PGBENCH=0        skip the pgbench cells (idle memory only)
#   BENCH_CONNECT_CLIENTS=20  clients of the -C (connection setup) rows (0 = no such row)
#   BENCH_RLS=1            0 = no rls-select rows
#   BENCH_SAMPLING=0.2     share of transactions logged for p99
#   BENCH_OUT=path         where the table goes (default .build-bench/bench-results.md)
#   BENCH_KEEP=1           keep the work directory (logs, configs) for inspection
#   BENCH_PROFILE=proxy-tx perf record -g each cell of these targets into the work directory
#   BENCH_PERF_STAT=1      with BENCH_PROFILE: CPU microseconds per transaction (perf stat), user and system
#   BENCH_SYSCALLS=1       with BENCH_PROFILE: system calls per transaction, by call (strace -c)
#   BENCH_ROUNDS=1         run each cell this many times, targets taking turns: rows show the median
#                          run of each target, and a table gives every round's ratio to PgBouncer
#   BENCH_CALLGRIND=N      run tenant-proxy (transaction mode) under valgrind --tool=callgrind, N
#                          transactions per client per cell: its instructions per transaction
#   BENCH_UPSTREAM_SOCKET=1  both poolers reach PostgreSQL by its Unix-domain socket, not TCP
#   BENCH_SKIP_BUILD=1     no build: use $TENANT_PROXY_BIN, default .build-bench/release/tenant-proxy
# Needs: root or the postgres OS user's rights (Postgres and PgBouncer run as `postgres`),
# Debian's postgresql-15 (initdb, pg_ctl, pgbench, psql), pgbouncer (installed if missing),
# valgrind for BENCH_CALLGRIND (installed if missing), python3, swift.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$(pwd)"

if ! command -v swift >/dev/null 2>&1; then
  for d in /opt/swift/usr/bin /opt/swift/bin /usr/share/swift/usr/bin; do
    if [ -x "$d/swift" ]; then export PATH="$d:$PATH"; break; fi
  done
fi

# Installs a Debian package the benchmark needs (as root; otherwise says what is missing).
install_package() {
  echo "==> installing $1 (Debian package)"
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$1" >/dev/null \
      || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y "$1" >/dev/null; }
  else
    echo "bench.sh: $1 missing; run as root or install it" >&2; exit 1
  fi
}
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
  install_package pgbouncer
fi
if [ "${BENCH_CALLGRIND:-0}" != 0 ] && ! command -v valgrind >/dev/null 2>&1; then
  install_package valgrind
fi
export PATH="$PATH:/usr/sbin"
# Debian's package starts a pgbouncer service on port 6432; we only use the binary.

if [ "${BENCH_SKIP_BUILD:-0}" = 0 ]; then
  command -v swift >/dev/null 2>&1 || { echo "bench.sh: swift not found" >&2; exit 1; }
  echo "==> scripts/build-release.sh --scratch-path .build-bench"
  bash scripts/build-release.sh --scratch-path .build-bench
  export TENANT_PROXY_BIN="$repo/.build-bench/release/tenant-proxy"
else
  export TENANT_PROXY_BIN="${TENANT_PROXY_BIN:-$repo/.build-bench/release/tenant-proxy}"
fi
[ -x "$TENANT_PROXY_BIN" ] || { echo "bench.sh: $TENANT_PROXY_BIN missing" >&2; exit 1; }

# Thousands of idle connections need file descriptors (children inherit the limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work="$(mktemp -d /tmp/tp-bench.XXXXXX)"
chmod 755 "$work"
export BENCH_WORKDIR="$work"

# bench.py stops what it started; this is the backstop if it dies without doing so. It only
# signals the process ids bench.py recorded in $work/pids (its children) and the throwaway
# cluster's postmaster (from its postmaster.pid).
cleanup() {
  local rc=$?
  if [ -n "${py_pid:-}" ] && kill -0 "$py_pid" 2>/dev/null; then
    kill -TERM "$py_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$py_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  if [ -s "$work/pg/data/postmaster.pid" ]; then   # immediate shutdown of the throwaway cluster
    kill -QUIT "$(head -n 1 "$work/pg/data/postmaster.pid")" 2>/dev/null || true
  fi
  if [ -s "$work/pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
    done <"$work/pids"
    sleep 1
    while read -r pid; do
      [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
    done <"$work/pids"
  fi
  if [ "${BENCH_KEEP:-0}" = 0 ] && [ -z "${BENCH_PROFILE:-}" ]; then rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# Run in the background and wait, so the INT/TERM trap fires at once; bench.py gets SIGTERM from
# cleanup (and SIGINT directly from the terminal on Ctrl-C) and stops everything it started.
python3 -u scripts/bench/bench.py &
py_pid=$!
wait "$py_pid"
