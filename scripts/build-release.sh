#!/usr/bin/env bash
# The release build of tenant-proxy, with every module (SwiftNIO's included) compiled without
# run-time exclusivity checks. Extra arguments go to `swift build` (--scratch-path, --product,
# --static-swift-stdlib, ...).
#
# Why: in a release build the dynamic exclusivity checks are thread-local bookkeeping around each
# access to a class's stored properties. SwiftNIO's read and write paths make dozens of such
# accesses per message relayed; with the checks on, they were 15% of the proxy's instructions per
# transaction (callgrind, pgbench select-only, 20 clients, transaction mode: 31k -> 25k
# instructions per transaction; prepared protocol 41k -> 31k). The compile-time checks still run,
# and debug builds (the whole test suite) keep the run-time checks too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec swift build -c release -Xswiftc -enforce-exclusivity=unchecked "$@"
