#!/usr/bin/env bash
# A guided tour: two local controllers; a model on alpha with two machine agents running a
# deployed application; the leader of alpha SIGKILLed while the workloads keep running, a new
# leader elected, nothing lost, the killed node back; the model migrated live to beta; then a
# third controller and `ctl balance` spreading alpha's busy models over the three. Everything it starts lives in temporary
# dirs (its own CTL_DATA and STARLING_WORK) and is stopped on exit, whatever happens.
#
#   scripts/demo.sh            (STARLING_BIN_DIR to use prebuilt binaries and skip the build)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
scripts="$STARLING_REPO/scripts"

step() { echo; echo "==> $*"; }
run() { echo "$ ${*@Q}"; "$@"; }

if [[ -z "${STARLING_DEMO_NO_BUILD:-}" ]]; then
    step "Building the binaries (cargo build --bins)"
    (cd "$STARLING_REPO" && cargo build --bins)
fi
ctl="$STARLING_BIN_DIR/ctl"
need_bin "$ctl"
need_bin "$STARLING_BIN_DIR/ctld"
need_bin "$STARLING_BIN_DIR/agentd"

demo_dir="$(mktemp -d "${TMPDIR:-/tmp}/starling-demo.XXXXXX")"
export STARLING_WORK="$demo_dir/work"
export CTL_DATA="$demo_dir/ctl"
unset CTL_CONTROLLER CTL_MODEL
started=()
agent_pids=()
agent_dirs=()
cleanup() {
    local rc=$? name pid dir
    echo
    echo "==> Cleaning up: stopping agents ${agent_pids[*]:-none}, their workloads, and ${started[*]:-nothing}"
    for pid in "${agent_pids[@]+"${agent_pids[@]}"}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for dir in "${agent_dirs[@]+"${agent_dirs[@]}"}"; do
        stop_workloads "$dir"
    done
    for name in "${started[@]+"${started[@]}"}"; do
        "$scripts/stop-cluster.sh" "$name" || rc=1
    done
    rm -rf "$demo_dir"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

leader_of() {
    "$ctl" show-controller "$1" --format json | python3 -c 'import json,sys
c = next(iter(json.load(sys.stdin).values())); print("" if c.get("leader") is None else c["leader"])'
}

step "Bootstrapping controller alpha (3 nodes on loopback) in $STARLING_WORK"
started+=(alpha)
run "$scripts/bootstrap-cluster.sh" alpha -n 3
step "Bootstrapping controller beta (3 nodes on loopback)"
started+=(beta)
run "$scripts/bootstrap-cluster.sh" beta -n 3

step "The client store knows both controllers"
run "$ctl" controllers
step "Controller alpha: its Raft group"
run "$ctl" show-controller alpha

step "A model on alpha with two machines, each running its own agentd"
run "$ctl" controller-config -c alpha agent-heartbeat-interval=1s
run "$ctl" add-model -c alpha demo
for machine in 0 1; do
    config="$demo_dir/agent-$machine.yaml"
    run "$ctl" add-machine --agent-config "$config"
    "$STARLING_BIN_DIR/agentd" --config "$config" --data-dir "$demo_dir/machine-$machine" \
        2>"$demo_dir/agentd-$machine.log" &
    agent_pids+=($!)
    agent_dirs+=("$demo_dir/machine-$machine")
    echo "agentd for machine $machine: pid $!, log $demo_dir/agentd-$machine.log"
done

step "Deploying the counter charm with a unit on each machine"
run "$ctl" deploy "$scripts/charms/counter" --to 0,1
wait_for_active() {
    local deadline=$((SECONDS + 90))
    until "$ctl" status --format json | python3 -c 'import json,sys
s = json.load(sys.stdin)
units = [u for a in s["applications"].values() for u in a.get("units", {}).values()]
ok = units and all(u["workload-status"]["current"] == "active" for u in units)
ok = ok and all(m["agent-status"]["current"] == "started" for m in s["machines"].values())
sys.exit(0 if ok else 1)'; do
        ((SECONDS < deadline)) || die "units did not become active within 90s (see $demo_dir/agentd-*.log)"
        sleep 1
    done
}
wait_for_active
run "$ctl" status
workload_pid="$(workload_pids "$demo_dir/machine-0" | head -n 1)"
counter_log="$(ls "$demo_dir"/machine-0/units/*/counter.log | head -n 1)"
echo "counter/0 runs as pid $workload_pid and has written $(wc -l <"$counter_log") lines to $counter_log"

step "Taking a backup of controller alpha (kept on the controller and downloaded)"
run "$ctl" create-backup -c alpha "before the failover" --filename "$demo_dir/alpha.backup"
run "$ctl" backups -c alpha

step "Writing a controller-config value on alpha"
run "$ctl" controller-config -c alpha custom.greeting="hello from the demo"
run "$ctl" controller-config -c alpha custom.greeting

old_leader="$(leader_of alpha)"
old_pid="$(recorded_pid alpha "$old_leader")"
step "Killing alpha's leader, node $old_leader (pid $old_pid), with SIGKILL"
pid_is_node "$old_pid" "$(cluster_dir alpha)/node-$old_leader" || die "pid $old_pid is not alpha's node $old_leader"
run kill -KILL "$old_pid"

step "Waiting (at most 60s) for alpha to elect a new leader"
new_leader=""
deadline=$((SECONDS + 60))
while ((SECONDS < deadline)); do
    new_leader="$(leader_of alpha 2>/dev/null || true)"
    [[ -z "$new_leader" || "$new_leader" == "$old_leader" ]] || break
    new_leader=""
    sleep 0.5
done
[[ -n "$new_leader" ]] || die "no new leader after 60s"
echo "new leader: node $new_leader"
run "$ctl" show-controller alpha

step "The workloads never stopped: same pid, still counting"
kill -0 "$workload_pid" || die "workload pid $workload_pid is gone"
echo "counter/0 still runs as pid $workload_pid; $(wc -l <"$counter_log") lines now"
wait_for_active
run "$ctl" status

step "The value written before the failover is still there"
value="$("$ctl" controller-config -c alpha custom.greeting)"
echo "custom.greeting = $value"
[[ "$value" == "hello from the demo" ]] || die "expected \"hello from the demo\", got \"$value\""

step "Restarting the killed node $old_leader with its data dir"
run "$scripts/start-node.sh" alpha "$old_leader"
deadline=$((SECONDS + 60))
until "$ctl" controller-config -c alpha --local --endpoint "$(awk -v id="$old_leader" '$1 == id {print $2}' "$(cluster_dir alpha)/ports")" custom.greeting >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "node $old_leader did not catch up within 60s"
    sleep 0.5
done
echo "node $old_leader serves custom.greeting = $("$ctl" controller-config -c alpha --local --endpoint "$(awk -v id="$old_leader" '$1 == id {print $2}' "$(cluster_dir alpha)/ports")" custom.greeting)"
run "$ctl" show-controller alpha

step "Live migration: the prechecks alone (--dry-run changes nothing)"
run "$ctl" migrate alpha:demo beta --dry-run

step "Migrating model demo from alpha to beta while the workloads keep running and a client keeps writing"
workload_pids_before="$(workload_pids "$demo_dir/machine-0") $(workload_pids "$demo_dir/machine-1")"
# A client writing to the model throughout: no write fails while the model moves (writes that
# meet the final fence wait, and ctl sends them on to beta itself). Once the migration is DONE
# alpha answers with the redirect, and the writer stops.
writer_log="$demo_dir/writer.log"
rm -f "$demo_dir/writer.stop"
(
    n=0
    while [[ ! -e "$demo_dir/writer.stop" ]] && ((n < 5000)); do
        n=$((n + 1))
        if out="$("$ctl" model-config -m alpha:demo "writer-$n=$n" 2>&1)"; then
            echo "ok $n"
        elif [[ "$out" == *"has been migrated to controller"* ]]; then
            echo "moved $n"
            break
        else
            echo "ERROR $n $out"
        fi
    done
) >"$writer_log" &
writer_pid=$!
run "$ctl" migrate alpha:demo beta --wait --timeout 5m
touch "$demo_dir/writer.stop"
wait "$writer_pid"
echo "the writer: $(grep -c '^ok' "$writer_log") writes acknowledged during the migration, $(grep -c '^ERROR' "$writer_log" || true) refused"
if grep '^ERROR' "$writer_log"; then die "a write failed during the migration"; fi

step "alpha now only knows where the model went"
if "$ctl" status -m alpha:demo; then die "alpha still serves the migrated model"; fi

step "The model on beta: same units, same workloads, the agents connected to beta"
run "$ctl" switch beta:demo
wait_for_active
run "$ctl" status
run "$ctl" show-model demo
for dir in "$demo_dir/machine-0" "$demo_dir/machine-1"; do
    for pid in $(workload_pids "$dir"); do
        [[ " $workload_pids_before " == *" $pid "* ]] || die "workload pid $pid is new: a workload was restarted"
    done
done
echo "workload pids before and after: $workload_pids_before"
grep -h "controller-name" "$demo_dir"/agent-*.yaml || true
kill -0 "$workload_pid" || die "workload pid $workload_pid is gone"
echo "counter/0 still runs as pid $workload_pid; $(wc -l <"$counter_log") lines now"

step "A third controller, gamma (1 node), and load on alpha: three busy models"
started+=(gamma)
run "$scripts/bootstrap-cluster.sh" gamma -n 1
busy=(web db cache)
for model in "${busy[@]}"; do
    run "$ctl" add-model -c alpha "$model"
done
echo "$ writing 40 settings to each of alpha:web, alpha:db and alpha:cache"
for i in $(seq 1 40); do
    for model in "${busy[@]}"; do
        "$ctl" model-config -m "alpha:$model" "k$((i % 4))=$i" >/dev/null
    done
done
run "$ctl" models -c alpha

step "Balancing the three controllers: the plan, then the moves"
run "$ctl" balance --dry-run
run "$ctl" balance --wait --timeout 5m
for controller in alpha beta gamma; do
    run "$ctl" models -c "$controller"
done
echo "(Each node also serves a live status page on its HTTPS side port, e.g. alpha's node 1 at"
echo " https://$(awk 'NR == 1 {print $3}' "$(cluster_dir alpha)/ports")/ until the clean-up below: see README, \"The status page\".)"

step "Done"
