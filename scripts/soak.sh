#!/usr/bin/env bash
# Chaos soak: runs one of the chaos harness's random scenarios again and again with fresh random
# seeds for as long as asked, and saves every failing seed with its history, logs and run output.
# The scenarios: `soak_random` in cluster-tests/tests/chaos.rs (the default: two controllers,
# random migrations, faults and failpoints) and `soak_sequences` in
# cluster-tests/tests/sequences.rs (`--test sequences`: three controllers, random operation
# sequences — migrate onward and back, abort and retry, destroy and re-create, backup and
# restore, revoke and grant — with leader kills, leader pauses and partitions mixed in).
#
#   scripts/soak.sh --duration 2h            # random seeds until two hours have passed
#   scripts/soak.sh --duration 30m --run-secs 120 --out /tmp/soak
#   scripts/soak.sh --test sequences --duration 1h
#   scripts/soak.sh --seed 0x1234abcd        # replay one seed once
#
# Options:
#   --test T       chaos (default) or sequences: which scenario runs
#   --duration D   how long to keep starting runs (Ns, Nm, Nh or plain seconds; default 10m)
#   --run-secs N   faults (or steps) phase of one run, in seconds (default 90); a run then heals
#                  and checks
#   --out DIR      where results go (default target/chaos-soak/<UTC timestamp>)
#   --seed S       run only this seed (decimal or 0x-hex), once
#
# Results in DIR: runs.tsv (seed, result, seconds; for sequences also the run's steps, migrations,
# leader kills and refusals), failing-seeds.txt, and per failing seed
# failures/<test>-<seed>/ with history.json, seed.txt (the replay command), node and agent
# logs (and steps.txt for sequences), and run.log (the test's output). Every run is bounded
# (nextest kills a hung run with its process group, and `timeout` bounds nextest itself). Exit
# status: 0 when every run passed, 1 otherwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

duration=10m
run_secs=90
out=""
only_seed=""
test_binary=chaos
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) duration="$2"; shift 2 ;;
        --run-secs) run_secs="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --seed) only_seed="$2"; shift 2 ;;
        --test) test_binary="$2"; shift 2 ;;
        -h | --help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "ERROR unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

to_seconds() {
    local d="$1"
    case "$d" in
        *h) echo $(( ${d%h} * 3600 )) ;;
        *m) echo $(( ${d%m} * 60 )) ;;
        *s) echo $(( ${d%s} )) ;;
        *[!0-9]* | "") echo "ERROR bad duration $d" >&2; exit 2 ;;
        *) echo "$d" ;;
    esac
}
total=$(to_seconds "$duration")
case "$test_binary" in
    chaos) test_name=soak_random ;;
    sequences) test_name=soak_sequences ;;
    *) echo "ERROR unknown --test $test_binary (chaos or sequences)" >&2; exit 2 ;;
esac
[[ "$run_secs" =~ ^[0-9]+$ ]] || { echo "ERROR bad --run-secs $run_secs" >&2; exit 2; }
out="${out:-target/chaos-soak/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out/failures" "$out/runs"
out="$(cd "$out" && pwd)"

echo "==> building the daemons with failpoints and the $test_binary test"
cargo build --workspace --bins --features starling-ctld/failpoints,starling-ctld/planted-bugs
cargo nextest run -p starling-cluster-tests --test "$test_binary" --no-run

random_seed() {
    printf '0x%016x\n' "$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')"
}

runs=0
failures=0
deadline=$(( $(date +%s) + total ))
printf 'seed\tresult\tseconds\tsummary\n' > "$out/runs.tsv"
: > "$out/failing-seeds.txt"
while :; do
    if [[ -n "$only_seed" ]]; then
        seed="$only_seed"
    else
        (( $(date +%s) < deadline )) || break
        seed="$(random_seed)"
    fi
    runs=$(( runs + 1 ))
    log="$out/runs/$seed.log"
    echo "==> run $runs: seed=$seed (replay: scripts/soak.sh --test $test_binary --seed $seed --run-secs $run_secs)"
    started=$(date +%s)
    result=pass
    if ! STARLING_CHAOS_SEED="$seed" STARLING_SOAK_SECS="$run_secs" \
        STARLING_CHAOS_OUT="$out/failures" \
        timeout --signal=KILL $(( run_secs + 900 )) \
        cargo nextest run -p starling-cluster-tests --test "$test_binary" --run-ignored only \
        --no-fail-fast --success-output final "$test_name" > "$log" 2>&1; then
        result=fail
        failures=$(( failures + 1 ))
        echo "$seed" >> "$out/failing-seeds.txt"
        mkdir -p "$out/failures/$test_name-$seed"
        cp "$log" "$out/failures/$test_name-$seed/run.log"
        echo "    FAILED: saved in $out/failures/$test_name-$seed"
        grep -E '^\s*Error:|checker:' "$log" | head -5 | sed 's/^/    /' || true
    fi
    summary="$(grep -m1 -oE 'sequence: [0-9]+ steps.*' "$log" | sed 's/^sequence: //' || true)"
    [[ "$result" == fail ]] || rm -f "$log"
    printf '%s\t%s\t%s\t%s\n' "$seed" "$result" $(( $(date +%s) - started )) "$summary" \
        >> "$out/runs.tsv"
    [[ -z "$only_seed" ]] || break
done

echo "==> $runs run(s), $failures failure(s); results in $out"
if (( failures > 0 )); then
    echo "failing seeds:"
    sed 's/^/  /' "$out/failing-seeds.txt"
    exit 1
fi
