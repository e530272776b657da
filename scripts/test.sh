#!/usr/bin/env bash
# The test command of CI and of newcomers: builds the binaries the process-level tests run, then
# runs every test of the workspace (nextest when installed, else cargo test). Extra arguments are
# passed to the test runner, e.g. `scripts/test.sh -p starling-cluster-tests acknowledged_writes`
# (with -p/--package only those packages run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The migration tests force failures with failpoints (`fail` crate, off unless FAILPOINTS is
# set) and calibrate themselves against planted bugs (off unless STARLING_PLANTED_BUGS names
# them); test runs build everything with both so the test build does not replace the binaries.
features=(--features starling-ctld/failpoints,starling-ctld/planted-bugs)
echo "==> cargo build --workspace --bins ${features[*]}"
cargo build --workspace --bins "${features[@]}"

# The whole workspace (with the failpoints feature, so the test build keeps the binaries as
# built above) unless the caller picked packages.
scope=(--workspace "${features[@]}")
for arg in "$@"; do
    case "$arg" in -p | --package | -p=* | --package=*) scope=() ;; esac
done

# Test errors (anyhow) carry their context in the message; a captured backtrace after it only
# pushes the message out of a truncated CI log. Panics keep their backtraces (RUST_BACKTRACE).
export RUST_LIB_BACKTRACE="${RUST_LIB_BACKTRACE:-0}"

if cargo nextest --version >/dev/null 2>&1; then
    profile=default
    [[ "${CI:-}" != "true" ]] || profile=ci
    echo "==> cargo nextest run ${scope[*]} --no-fail-fast --profile $profile $*"
    exec cargo nextest run "${scope[@]}" --no-fail-fast --profile "$profile" "$@"
else
    echo "==> cargo-nextest not installed; cargo test ${scope[*]} --no-fail-fast $*"
    exec cargo test "${scope[@]}" --no-fail-fast "$@"
fi
