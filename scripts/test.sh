#!/usr/bin/env bash
# The project's test command: build, unit tests, then the integration suite (real PostgreSQL,
# the built tenant-proxy binary, real clients). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v swift >/dev/null 2>&1; then
  for d in /opt/swift/usr/bin /opt/swift/bin /usr/share/swift/usr/bin; do
    if [ -x "$d/swift" ]; then export PATH="$d:$PATH"; break; fi
  done
fi
command -v swift >/dev/null 2>&1 || { echo "test.sh: swift not found" >&2; exit 1; }

echo "==> swift build"
swift build

echo "==> swift test"
swift test --parallel

bin_path="$(swift build --show-bin-path)"
export TENANT_PROXY_BIN="${TENANT_PROXY_BIN:-$bin_path/tenant-proxy}"
[ -x "$TENANT_PROXY_BIN" ] || { echo "test.sh: $TENANT_PROXY_BIN missing after build" >&2; exit 1; }

echo "==> integration tests (proxy: $TENANT_PROXY_BIN)"
python3 -m pytest -q -p no:cacheprovider Tests/integration "$@"
