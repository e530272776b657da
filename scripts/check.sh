#!/usr/bin/env bash
# Everything a change must pass before it lands: formatting, clippy (warnings are errors), the
# architecture invariants of ARCHITECTURE.md checked mechanically, then scripts/test.sh.
# Every step runs even when an earlier one failed; the summary names what failed.
#
#   scripts/check.sh [--no-test] [extra test args...]
#   scripts/check.sh --rule NAME [ARGS...]   # one architecture rule alone, e.g.
#                                            # `--rule is_thin starling-agentd`, `--rule layering`
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

run_tests=true
if [[ "${1:-}" == "--no-test" ]]; then
    run_tests=false
    shift
fi

failed=()
step() {
    local name="$1"
    shift
    echo
    echo "==> $name"
    if "$@"; then
        echo "ok: $name"
    else
        echo "FAILED: $name"
        failed+=("$name")
    fi
}

# Workspace crates that name CRATE as a direct normal (or build) dependency, one per line.
direct_dependents() {
    local out
    if ! out="$(cargo tree -e normal,build -i "$1" --workspace --depth 1 --prefix none --charset ascii 2>&1)"; then
        if grep -q "did not match any packages" <<<"$out"; then
            return 0 # nobody uses it (yet)
        fi
        echo "$out" >&2
        return 1
    fi
    # Line 1 is CRATE itself; workspace members carry their path in parentheses.
    tail -n +2 <<<"$out" | grep -F "($PWD" | awk '{print $1}' | sort -u
}

only_dependent() {
    local crate="$1" allowed="$2" deps
    deps="$(direct_dependents "$crate")" || return 1
    deps="$(grep -v -x -F "$allowed" <<<"$deps" | grep -v '^$')"
    if [[ -n "$deps" ]]; then
        echo "only $allowed may depend on $crate directly, but so do: $(tr '\n' ' ' <<<"$deps")"
        return 1
    fi
}

# Dependency arrows only point down the table proto < storage < raft < ctld; the shared daemon
# crate depends on proto at most, agentd on proto and the daemon crate, cli on proto; nothing
# depends on cluster-tests, which may depend on everything.
layering() {
    local script
    script="$(cat <<'PY'
import json, sys
allowed = {
    "starling-proto": set(),
    "starling-storage": {"starling-proto"},
    "starling-raft": {"starling-proto", "starling-storage"},
    "starling-daemon": {"starling-proto"},
    "starling-ctld": {"starling-proto", "starling-storage", "starling-raft", "starling-daemon"},
    "starling-agentd": {"starling-proto", "starling-daemon"},
    "starling-cli": {"starling-proto"},
}
meta = json.load(sys.stdin)
members = {p["name"] for p in meta["packages"]}
bad = []
for p in meta["packages"]:
    name = p["name"]
    if name == "starling-cluster-tests":
        continue  # dev-only: may depend on everything
    for d in p["dependencies"]:
        dep, kind = d["name"], d["kind"] or "normal"
        if dep not in members:
            continue
        if dep == "starling-cluster-tests":
            bad.append(f"{name} -> {dep}: nothing may depend on cluster-tests")
        elif name not in allowed:
            bad.append(f"{name} is not in the layering table of scripts/check.sh")
        elif kind == "dev" and name != "starling-cli":
            continue  # dev-dependencies may reach sideways for tests; cli stays thin
        elif dep not in allowed[name]:
            bad.append(f"{name} -> {dep} ({kind})")
for b in bad:
    print("arrow up the table:", b)
sys.exit(1 if bad else 0)
PY
)"
    cargo metadata --format-version 1 --no-deps | python3 -c "$script"
}

# PACKAGE's normal dependency tree (its build, not its tests) holds none of the controller's
# storage and consensus crates.
is_thin() {
    local out
    out="$(cargo tree -e normal -p "$1" --prefix none --charset ascii)" || return 1
    if grep -E '^(sled|openraft|starling-raft|starling-storage|starling-ctld) ' <<<"$out"; then
        echo "$1 must not pull in the crates above"
        return 1
    fi
}

# No import cycle between the top-level modules of starling-ctld: each module's `crate::x`
# paths (in `use` lines and inline) are its edges; a cycle is printed with its edges' files.
ctld_modules_acyclic() {
    python3 scripts/module_cycles.py agent/ctld/src
}

generated_code_only_in_proto() {
    local hits
    hits="$(grep -rn --include='*.rs' -e 'include_proto!' -e 'tonic_prost_build' -e 'tonic_build' -e 'prost_build' \
        --exclude-dir=target --exclude-dir=.work --exclude-dir=.git . | grep -v '^\./proto/' || true)"
    if [[ -n "$hits" ]]; then
        echo "generated code belongs in proto/ only:"
        echo "$hits"
        return 1
    fi
}

if [[ "${1:-}" == "--rule" ]]; then
    shift
    "$@"
    exit
fi

step "cargo fmt --all --check" cargo fmt --all --check
step "cargo clippy --workspace --all-targets -- -D warnings" cargo clippy --workspace --all-targets -- -D warnings
step "cargo clippy (failpoints, planted bugs) -- -D warnings" cargo clippy --workspace --all-targets --features starling-ctld/failpoints,starling-ctld/planted-bugs -- -D warnings
step "only starling-storage depends on sled" only_dependent sled starling-storage
step "only starling-raft depends on openraft" only_dependent openraft starling-raft
step "dependency arrows point down the crate table" layering
step "ctl does not pull in raft, storage, sled or openraft" is_thin starling-cli
step "agentd does not pull in raft, storage, sled or openraft" is_thin starling-agentd
step "the shared daemon crate stays small" is_thin starling-daemon
step "no import cycles between starling-ctld's top-level modules" ctld_modules_acyclic
step "generated code only in starling-proto" generated_code_only_in_proto
if $run_tests; then
    step "scripts/test.sh" scripts/test.sh "$@"
fi

echo
if ((${#failed[@]})); then
    echo "check.sh: ${#failed[@]} step(s) FAILED:"
    printf '  - %s\n' "${failed[@]}"
    exit 1
fi
echo "check.sh: all steps passed"
