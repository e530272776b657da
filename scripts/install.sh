#!/usr/bin/env bash
# Installs ctl, ctld and agentd: a release build of the three binaries, copied to PREFIX/bin
# (default ~/.local/bin). Prints the PATH line to add when PREFIX/bin is not on PATH yet.
#
#   scripts/install.sh [--prefix DIR] [--debug]
#
# The same with cargo alone (each in its own build): cargo install --locked --path cli, then
# --path agent/ctld and --path agent/agentd (into ~/.cargo/bin).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

prefix="$HOME/.local"
profile=release
while [[ $# -gt 0 ]]; do
    case "$1" in
    --prefix)
        [[ $# -ge 2 ]] || { echo "ERROR --prefix needs a directory" >&2; exit 2; }
        prefix="$2"
        shift 2
        ;;
    --debug)
        profile=debug
        shift
        ;;
    -h | --help)
        sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "ERROR unknown argument \"$1\" (see --help)" >&2
        exit 2
        ;;
    esac
done

build=(cargo build --locked --bins -p starling-cli -p starling-ctld -p starling-agentd)
[[ "$profile" == debug ]] || build+=(--release)
echo "==> ${build[*]}"
"${build[@]}"

target="${CARGO_TARGET_DIR:-target}/$profile"
mkdir -p "$prefix/bin"
for bin in ctl ctld agentd; do
    install -m 0755 "$target/$bin" "$prefix/bin/$bin"
    echo "installed $prefix/bin/$bin"
done
case ":$PATH:" in
*":$prefix/bin:"*) ;;
*) echo "Add it to your PATH:  export PATH=\"$prefix/bin:\$PATH\"" ;;
esac
