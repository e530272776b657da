#!/usr/bin/env bash
# Benchmarks a local 3-node controller against limits measured in the same run (docs/performance.md):
#   - the physics of a commit: the disk's single-writer fdatasync rate and latency and the loopback
#     TCP round trip (cluster-tests' fsync_probe, same directory),
#   - committed writes/s and p50/p99 latency with 1 writer and with 256 in flight (256 B values,
#     cluster-tests' loadgen over TLS with the admin token), each followed at once by the same load
#     on a 3-node etcd (Debian's etcd-server) driven by the same loadgen binary (a Rust tonic client
#     of etcd's KV.Put: same runtime, writer tasks, connections and value size), and the ratios,
#   - where a single writer's write spends its time: the leader's and a follower's
#     `starling_raft_write_stage_seconds` / `starling_raft_follower_append_seconds` after that run,
#   - leader failover, Starling then etcd: SIGKILL of the leader to the next committed write
#     (--failover-reps repetitions each, the killed node restarted between them),
#   - leader stability: elections (term changes) during 256 in flight for --stability-secs with
#     the nodes' disk writes throttled (blkio cgroup, 300 write IOPS; else a competing fdatasync
#     load) and one follower SIGSTOPped for 1 s,
#   - a rolling restart (SIGTERM, restart, one node at a time) under one writer: its longest pause,
#   - live migration between two 3-node controllers of models of 1,000 and 10,000 units (one
#     simulated agent per 100 units; cluster-tests' migration_bench), 10 migrations back and
#     forth with 1 and then 64 clients writing continuously: the write pause (each migration's
#     longest gap between two acknowledged writes of one client) p50/p99/max over the 10, and
#     for the first migration total time, each phase, import MB/s and records/s (the IMPORT
#     phase, and the staging of the description and a 64 MiB charm up to the import's commit),
#     and the time until every agent is on the target,
#   - agent fan-in: N simulated agents (default 10,000), each with its own TLS connection, Watch
#     stream and heartbeats, held by a 1-node controller (cluster-tests' agent_load): the node's
#     RSS per agent.
# Prints a table and ONE JSON line (prefixed "BENCH_JSON ") with the figures and ratios.
#
#   scripts/bench.sh [--duration SECS] [--failover-reps N] [--fsync-secs SECS] [--no-etcd] [--no-build]
#                    [--stability-secs SECS] [--migration-units "1000 10000"]
#                    [--migration-charm-mib 64] [--migration-runs 10] [--migration-writers "1 64"]
#                    [--no-migration]
#                    [--only-migration] [--agents N] (0: no fan-in step)
#   scripts/bench.sh --profile [--duration SECS]
#       only the physics probe and the single-writer runs, with the stage breakdown of one write
#
# Only 127.0.0.1 is used; every wait and load is bounded in time; everything started is stopped.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export STARLING_BIN_DIR="${STARLING_BIN_DIR:-$repo/target/release}"
source "$repo/scripts/lib.sh"
scripts="$repo/scripts"

duration=10
failover_reps=20
stability_secs=60
profile=false
etcd_note="not measured"
fsync_secs=5
use_etcd=true
build=true
core=true
migration_units="1000 10000"
migration_charm_mib=64
migration_runs=10
migration_writers="1 64"
agents=10000
while (($#)); do
    case "$1" in
    --duration) duration="${2:?}"; shift 2 ;;
    --failover-reps) failover_reps="${2:?}"; shift 2 ;;
    --stability-secs) stability_secs="${2:?}"; shift 2 ;;
    --profile) profile=true; migration_units=""; agents=0; shift ;;
    --fsync-secs) fsync_secs="${2:?}"; shift 2 ;;
    --no-etcd) use_etcd=false; shift ;;
    --no-build) build=false; shift ;;
    --migration-units) migration_units="${2:?}"; shift 2 ;;
    --migration-charm-mib) migration_charm_mib="${2:?}"; shift 2 ;;
    --migration-runs) migration_runs="${2:?}"; shift 2 ;;
    --migration-writers) migration_writers="${2:?}"; shift 2 ;;
    --no-migration) migration_units=""; shift ;;
    --only-migration) core=false; use_etcd=false; agents=0; shift ;;
    --agents) agents="${2:?}"; shift 2 ;;
    *) echo "usage: $0 [--duration SECS] [--failover-reps N] [--fsync-secs SECS] [--stability-secs SECS] [--no-etcd] [--no-build] [--migration-units \"N ...\"] [--migration-charm-mib N] [--migration-runs N] [--migration-writers \"N ...\"] [--no-migration] [--only-migration] [--agents N] [--profile]" >&2; exit 2 ;;
    esac
done

step() { echo "==> $*" >&2; }

if $build; then
    step "building release binaries"
    (cd "$repo" && cargo build --release --bins >&2)
fi
bin="$STARLING_BIN_DIR"
for b in ctld ctl loadgen fsync_probe migration_bench agent_load; do need_bin "$bin/$b"; done

persistent_work="$STARLING_WORK"
mkdir -p "$persistent_work"
bench_dir="$(mktemp -d "$persistent_work/bench.XXXXXX")"
export STARLING_WORK="$bench_dir/work"
export CTL_DATA="$bench_dir/ctl"
unset CTL_CONTROLLER CTL_MODEL
results="$bench_dir/results"
mkdir -p "$results"
etcd_pids=()
throttle=""
cluster_started=false
fanin_started=false
migration_clusters=()

# Throttles the disk writes of PIDS... (on the device holding DIR) until throttle_stop: a blkio
# cgroup limited to 300 write IOPS when the kernel allows one here, else two competing
# fdatasync loops on the same disk. Prints what it did, for throttle_stop and the report.
throttle_start() {
    local dir="$1" dev cg pid
    shift
    dev="$(stat -c '%Hd:%Ld' "$dir")"
    cg="/sys/fs/cgroup/blkio/starling-bench-$$"
    if mkdir "$cg" 2>/dev/null && echo "$dev 300" >"$cg/blkio.throttle.write_iops_device" 2>/dev/null; then
        for pid in "$@"; do echo "$pid" >"$cg/cgroup.procs"; done
        echo "blkio:$cg:$dev:300-write-iops"
        return
    fi
    rmdir "$cg" 2>/dev/null || true
    local pids=()
    for _ in 1 2; do
        "$bin/fsync_probe" --dir "$dir" --seconds 600 --rtt-seconds 0 >/dev/null &
        pids+=("$!")
    done
    echo "contention:${pids[*]}"
}

throttle_stop() {
    local what="$1" cg pid
    case "$what" in
    blkio:*)
        cg="$(cut -d: -f2 <<<"$what")"
        [[ -d "$cg" ]] || return 0
        while read -r pid; do echo "$pid" >/sys/fs/cgroup/blkio/cgroup.procs 2>/dev/null || true; done <"$cg/cgroup.procs"
        rmdir "$cg" 2>/dev/null || true
        ;;
    contention:*)
        for pid in ${what#contention:}; do kill "$pid" 2>/dev/null || true; done
        ;;
    esac
}

cleanup() {
    local rc=$? pid
    if [[ -n "$throttle" ]]; then throttle_stop "$throttle"; fi
    if $cluster_started; then "$scripts/stop-cluster.sh" bench >/dev/null 2>&1 || true; fi
    if $fanin_started; then "$scripts/stop-cluster.sh" fanin >/dev/null 2>&1 || true; fi
    for name in "${migration_clusters[@]+"${migration_clusters[@]}"}"; do
        "$scripts/stop-cluster.sh" "$name" >/dev/null 2>&1 || true
    done
    for pid in "${etcd_pids[@]+"${etcd_pids[@]}"}"; do
        if [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *etcd*"$bench_dir"* ]]; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    local deadline=$((SECONDS + 10))
    for pid in "${etcd_pids[@]+"${etcd_pids[@]}"}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ -n "${STARLING_KEEP_BENCH:-}" ]]; then
        echo "bench files kept in $bench_dir" >&2
    else
        rm -rf "$bench_dir"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- the disk's fdatasync rate
step "fdatasync rate of $bench_dir (single writer, ${fsync_secs}s) and loopback round trip"
"$bin/fsync_probe" --dir "$bench_dir" --seconds "$fsync_secs" >"$results/fsync.json"
cat "$results/fsync.json" >&2

# ---------------------------------------------------------------- live migration
# Each size: --migration-runs migrations back and forth, once with each writer count of
# --migration-writers (fresh controllers each time); the first writer count's run also gives
# the per-phase figures (migration-UNITS.json).
for units in $migration_units; do
    first=true
    for writers in $migration_writers; do
        step "$migration_runs migrations of a $units-unit model between two 3-node controllers, $writers writer(s)"
        migration_clusters=(migsrc migdst)
        "$scripts/bootstrap-cluster.sh" migsrc -n 3 >/dev/null
        "$scripts/bootstrap-cluster.sh" migdst -n 3 >/dev/null
        machines=$((units / 100 > 10 ? units / 100 : 10))
        "$bin/migration_bench" --source "$(cluster_dir migsrc)/registration.yaml" \
            --target "$(cluster_dir migdst)/registration.yaml" --units "$units" --machines "$machines" \
            --charm-mib "$migration_charm_mib" --migrations "$migration_runs" --writers "$writers" \
            --step-timeout 900 | tee "$results/migration-$units-w$writers.txt" >&2
        sed -n 's/^MIGRATION_BENCH_JSON //p' "$results/migration-$units-w$writers.txt" \
            >"$results/migration-$units-w$writers.json"
        if $first; then
            cp "$results/migration-$units-w$writers.json" "$results/migration-$units.json"
            first=false
        fi
        "$scripts/stop-cluster.sh" migsrc >/dev/null 2>&1 || true
        "$scripts/stop-cluster.sh" migdst >/dev/null 2>&1 || true
        migration_clusters=()
    done
done

# ---------------------------------------------------------------- agent fan-in
if ((agents > 0)); then
    step "agent fan-in: $agents agents, one TLS connection each, on a 1-node controller"
    fanin_started=true
    "$scripts/bootstrap-cluster.sh" fanin -n 1 >/dev/null
    "$bin/agent_load" --registration "$(cluster_dir fanin)/registration.yaml" \
        --agents "$agents" --connections-per-agent --ctld-pid "$(recorded_pid fanin 1)" \
        --duration 20 | tee "$results/fanin.txt" >&2
    { grep '^{' "$results/fanin.txt" || true; } | tail -n 1 >"$results/fanin.json"
    "$scripts/stop-cluster.sh" fanin >/dev/null 2>&1 || true
    fanin_started=false
fi

# ---------------------------------------------------------------- the commit path, Starling and etcd
# Both run side by side and are measured back to back, each load on Starling and then the same
# load on etcd, with the same loadgen binary (one tokio runtime, the same writer tasks,
# connections, value size and timing; only the put differs).
if $core && $use_etcd; then
    if ! command -v etcd >/dev/null; then
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
            step "installing etcd-server"
            DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq etcd-server >&2 ||
                etcd_note="apt-get install etcd-server failed"
        else
            etcd_note="etcd not installed and not root"
        fi
    fi
    command -v etcd >/dev/null || use_etcd=false
fi

etcd_start() { # member index (1-3); ports and cluster from etcd_* globals
    local i="$1" cport="${eports[2 * $1 - 2]}" pport="${eports[2 * $1 - 1]}"
    mkdir -p "$bench_dir/etcd-$i"
    # Defaults kept (heartbeat 100 ms, election timeout 1 s) so etcd runs as operators run it.
    etcd --name "e$i" --data-dir "$bench_dir/etcd-$i/data" \
        --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
        --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
        --initial-cluster "$etcd_initial" --initial-cluster-state new --initial-cluster-token "bench-$$" \
        >>"$bench_dir/etcd-$i/log" 2>&1 </dev/null &
    etcd_pids[i]=$!
}

# Waits until LOADGEN_ARGS' cluster names a leader; prints loadgen's leader JSON.
wait_leader_json() {
    local deadline=$((SECONDS + 60)) out
    while ((SECONDS < deadline)); do
        if out="$(timeout 10 "$bin/loadgen" "$@" leader 2>/dev/null)"; then
            echo "$out"
            return 0
        fi
        sleep 0.2
    done
    return 1
}
etcd_members_write() {
    local e
    for e in "${etcd_endpoints[@]}"; do
        timeout 5 "$bin/loadgen" --etcd "$e" write --target all --conns 1 --duration-secs 0 >/dev/null 2>&1 || return 1
    done
}
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# Prints the write-stage quantiles of node ID's /metrics (its side port, verified with the CA).
scrape_stages() {
    local dir port
    dir="$(cluster_dir bench)"
    port="$(awk -v id="$1" '$1 == id {print $3}' "$dir/ports")"
    curl -sS --max-time 10 --cacert "$dir/node-$1/ca.pem" "https://$port/metrics" |
        grep -E '^starling_(raft_write_stage|raft_follower_append|storage_sync)_seconds' || true
}

if $core; then
step "bootstrapping a 3-node controller from $bin"
cluster_started=true
"$scripts/bootstrap-cluster.sh" bench -n 3 >/dev/null
registration="$(cluster_dir bench)/registration.yaml"
starling=(--registration "$registration")
wait_leader_json "${starling[@]}" >/dev/null || die "no Starling leader"

if $use_etcd; then
    step "starting a 3-node etcd ($(etcd --version | sed -n 1p)) on loopback"
    mapfile -t eports < <(free_ports 6)
    etcd_initial=""
    etcd_endpoints=()
    for i in 1 2 3; do
        etcd_initial+="${etcd_initial:+,}e$i=http://127.0.0.1:${eports[2 * i - 1]}"
        etcd_endpoints+=("127.0.0.1:${eports[2 * i - 2]}")
    done
    for i in 1 2 3; do etcd_start "$i"; done
    etcd=(--etcd "$(IFS=,; echo "${etcd_endpoints[*]}")")
    wait_leader_json "${etcd[@]}" >/dev/null || die "etcd has no leader after 60s (logs in $bench_dir/etcd-*/log)"
    etcd_note="$(etcd --version | sed -n 1p | tr -d '\n'), plaintext, same Rust loadgen"
fi

for load in 1 256; do
    if ((load == 1)); then conns=1; else conns=8; fi
    step "Starling: $load in flight for ${duration}s"
    "$bin/loadgen" "${starling[@]}" write --concurrency "$load" --conns "$conns" \
        --duration-secs "$duration" --prefix bench >"$results/starling-$load.json"
    cat "$results/starling-$load.json" >&2
    if ((load == 1)); then
        leader_id="$(wait_leader_json "${starling[@]}" | json_field leader)"
        scrape_stages "$leader_id" >"$results/stages-leader.txt"
        for id in $(cluster_node_ids bench); do
            [[ "$id" == "$leader_id" ]] || { scrape_stages "$id" >"$results/stages-follower.txt"; break; }
        done
    fi
    if $use_etcd; then
        step "etcd: $load in flight for ${duration}s"
        "$bin/loadgen" "${etcd[@]}" write --concurrency "$load" --conns "$conns" \
            --duration-secs "$duration" --prefix bench >"$results/etcd-$load.json"
        cat "$results/etcd-$load.json" >&2
    fi
    $profile && break
done

if ! $profile; then
members_healthy() {
    "$bin/ctl" show-controller bench --format json 2>/dev/null | python3 -c '
import json, sys
c = next(iter(json.load(sys.stdin).values()))
states = [m.get("state") for m in c.get("members", [])]
# Exactly one leader: a restarted leader claims its old term until it hears of the new one.
sys.exit(0 if c.get("leader") is not None and states.count("leader") == 1 and all(s in ("leader", "follower") for s in states) else 1)'
}
wait_members_healthy() {
    local deadline=$((SECONDS + 60))
    until members_healthy; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

: >"$results/failover.jsonl"
for ((rep = 1; rep <= failover_reps; rep++)); do
    wait_members_healthy || die "controller not healthy before failover repetition $rep"
    leader_json="$(wait_leader_json "${starling[@]}")" || die "no Starling leader"
    leader_id="$(json_field leader <<<"$leader_json")"
    leader_pid="$(recorded_pid bench "$leader_id")"
    pid_is_node "$leader_pid" "$(cluster_dir bench)/node-$leader_id" || die "pid of leader $leader_id unknown"
    step "Starling failover $rep/$failover_reps: SIGKILL leader node $leader_id (pid $leader_pid)"
    "$bin/loadgen" "${starling[@]}" failover --kill-pid "$leader_pid" \
        --kill-endpoint "$(json_field address <<<"$leader_json")" --timeout-secs 60 | tee -a "$results/failover.jsonl" >&2
    "$scripts/start-node.sh" bench "$leader_id" >/dev/null
done
wait_members_healthy || die "controller not healthy after the failovers"

if $use_etcd; then
    : >"$results/etcd-failover.jsonl"
    for ((rep = 1; rep <= failover_reps; rep++)); do
        # All three members take a write and one leads before each kill.
        deadline=$((SECONDS + 60))
        until leader_json="$(timeout 10 "$bin/loadgen" "${etcd[@]}" leader 2>/dev/null)" && etcd_members_write; do
            ((SECONDS < deadline)) || die "etcd not healthy before failover repetition $rep"
            sleep 0.2
        done
        leader_addr="$(json_field address <<<"$leader_json")"
        for i in 1 2 3; do [[ "${etcd_endpoints[i - 1]}" != "$leader_addr" ]] || member="$i"; done
        step "etcd failover $rep/$failover_reps: SIGKILL leader member e$member (pid ${etcd_pids[member]})"
        "$bin/loadgen" "${etcd[@]}" failover --kill-pid "${etcd_pids[member]}" \
            --kill-endpoint "$leader_addr" --timeout-secs 60 | tee -a "$results/etcd-failover.jsonl" >&2
        wait "${etcd_pids[member]}" 2>/dev/null || true
        etcd_start "$member"
    done
fi

# Leader stability: 256 in flight for stability_secs with the nodes' disk writes throttled (a
# blkio cgroup; else a competing fdatasync loop on the same disk) and one follower SIGSTOPped for
# 1 s halfway; any election shows as a term change.
step "stability: 256 in flight for ${stability_secs}s, disk throttled, a follower stopped for 1s"
wait_members_healthy || die "controller not healthy before the stability run"
before_json="$(wait_leader_json "${starling[@]}")"
throttle="$(throttle_start "$bench_dir" $(for id in $(cluster_node_ids bench); do recorded_pid bench "$id"; done))"
"$bin/loadgen" "${starling[@]}" write --concurrency 256 --conns 8 --target all \
    --duration-secs "$stability_secs" --prefix stability >"$results/stability-load.json" &
stability_load=$!
sleep "$((stability_secs / 2))"
follower_id="$(cluster_node_ids bench | grep -vx "$(json_field leader <<<"$before_json")" | sed -n 1p)"
follower_pid="$(recorded_pid bench "$follower_id")"
kill -STOP "$follower_pid"
sleep 1
kill -CONT "$follower_pid"
wait "$stability_load" || true
throttle_stop "$throttle"
# What was throttled goes into the report; the cleanup trap only needs to know it has ended.
throttled="$throttle"
throttle=""
after_json="$(wait_leader_json "${starling[@]}")"
python3 - "$before_json" "$after_json" "$throttled" "$results/stability-load.json" "$follower_id" >"$results/stability.json" <<'PY'
import json, sys
before, after = json.loads(sys.argv[1]), json.loads(sys.argv[2])
load = json.load(open(sys.argv[4])) if open(sys.argv[4]).read().strip() else {}
print(json.dumps({"leader_before": before["leader"], "leader_after": after["leader"],
                  "term_before": before["term"], "term_after": after["term"],
                  "elections": after["term"] - before["term"], "throttle": sys.argv[3],
                  "stopped_follower": int(sys.argv[5]), "load": load}))
PY
cat "$results/stability.json" >&2

# Rolling restart: SIGTERM each node in turn (the leader hands off first), restart it, wait
# until the group is whole again; one writer moving between endpoints records its longest pause.
step "rolling restart of the 3 nodes under one writer"
wait_members_healthy || die "controller not healthy before the rolling restart"
rm -f "$bench_dir/rolling.done"
"$bin/loadgen" "${starling[@]}" pauses --duration-secs 300 --stop-file "$bench_dir/rolling.done" \
    >"$results/rolling.json" &
pauses_load=$!
sleep 2
for id in $(cluster_node_ids bench); do
    pid="$(recorded_pid bench "$id")"
    kill -TERM "$pid"
    deadline=$((SECONDS + 30))
    while pid_is_node "$pid" "$(cluster_dir bench)/node-$id" && ((SECONDS < deadline)); do sleep 0.05; done
    pid_is_node "$pid" "$(cluster_dir bench)/node-$id" && die "node $id did not stop within 30s of SIGTERM"
    "$scripts/start-node.sh" bench "$id" >/dev/null
    wait_members_healthy || die "controller not healthy after restarting node $id"
    sleep 1
done
touch "$bench_dir/rolling.done"
wait "$pauses_load" || die "the rolling-restart writer failed"
cat "$results/rolling.json" >&2
fi

"$scripts/stop-cluster.sh" bench >/dev/null 2>&1 || true
cluster_started=false
fi

# ---------------------------------------------------------------- report
# The nodes' election timeout max: ctld's default unless STARLING_CTLD_ARGS overrides it.
election_timeout_max_ms="$("$bin/ctld" run --help |
    sed -n '/--election-timeout-max-ms/,/default:/s/.*\[default: \([0-9]*\)\].*/\1/p' | sed -n 1p)"
[[ -n "$election_timeout_max_ms" ]] || die "could not read ctld's default --election-timeout-max-ms"
read -r -a ctld_args <<<"${STARLING_CTLD_ARGS:-}"
for ((i = 0; i < ${#ctld_args[@]}; i++)); do
    [[ "${ctld_args[i]}" != "--election-timeout-max-ms" ]] || election_timeout_max_ms="${ctld_args[i + 1]}"
done
python3 - "$results" "$etcd_note" "$election_timeout_max_ms" "$migration_units" "$migration_writers" <<'PY'
import json, os, statistics, sys
results, etcd_note, election_max = sys.argv[1], sys.argv[2], float(sys.argv[3])
migration_units = [int(u) for u in sys.argv[4].split()]
migration_writers = [int(w) for w in sys.argv[5].split()]
def load(name):
    path = os.path.join(results, name)
    return json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else None
fsync = load("fsync.json")
s1, s256 = load("starling-1.json"), load("starling-256.json")
e1, e256 = load("etcd-1.json"), load("etcd-256.json")
def jsonl(name, field):
    path = os.path.join(results, name)
    return [json.loads(l)[field] for l in open(path) if l.strip()] if os.path.exists(path) else []
failovers, etcd_failovers = jsonl("failover.jsonl", "failover_ms"), jsonl("etcd-failover.jsonl", "failover_ms")
stability, rolling = load("stability.json"), load("rolling.json")
def pct(xs, p):
    xs = sorted(xs)
    return xs[max(0, min(len(xs) - 1, -(-len(xs) * p // 1) - 1))] if xs else None
# Stage quantiles of the single-writer run, in ms: {"leader": {stage: (p50, p99)}, ...}.
def stages(name):
    path, out = os.path.join(results, name), {}
    if not os.path.exists(path):
        return out
    for line in open(path):
        metric, _, value = line.rpartition(" ")
        labels = dict(kv.split("=", 1) for kv in metric[metric.find("{") + 1:metric.rfind("}")].split(",") if "=" in kv)
        labels = {k: v.strip('"') for k, v in labels.items()}
        if "quantile" not in labels or labels["quantile"] not in ("0.5", "0.99"):
            continue
        name = metric[:metric.find("{")].replace("starling_", "").replace("_seconds", "")
        stage = labels.get("stage") or labels.get("op") and f'{name}:{labels["op"]}' or name
        out.setdefault(stage, {})[labels["quantile"]] = round(float(value) * 1000, 3)
    return out
stage_leader, stage_follower = stages("stages-leader.txt"), stages("stages-follower.txt")
phys_ms = 2 * fsync["p50_us"] / 1000 + fsync["loopback_rtt_p50_us"] / 1000
migrations = {u: load(f"migration-{u}.json") for u in migration_units}
# The write pause over every migration of a run: {units: {writers: figures}}.
pauses = {u: {w: load(f"migration-{u}-w{w}.json") for w in migration_writers} for u in migration_units}
fanin = load("fanin.json")
ratio = lambda a, b: round(a / b, 3) if a is not None and b else None
w = lambda r: r["writes_per_s"] if r else None
fo_p50 = statistics.median(failovers) if failovers else None
efo_p50 = statistics.median(etcd_failovers) if etcd_failovers else None
rows = [
    ("disk fdatasync/s (1 writer)", f'{fsync["fsyncs_per_s"]:.0f}', f'p50 {fsync["p50_us"]/1000:.3f} ms, p99 {fsync["p99_us"]/1000:.2f} ms'),
    ("loopback TCP round trip p50 (ms)", f'{fsync["loopback_rtt_p50_us"]/1000:.3f}', f'p99 {fsync["loopback_rtt_p99_us"]/1000:.3f} ms; 2 fdatasyncs + 1 round trip = {phys_ms:.3f} ms'),
]
for label, r in (("starling writes/s, 1 writer", s1), ("starling writes/s, 256 in flight", s256),
                 ("etcd writes/s, 1 writer", e1), ("etcd writes/s, 256 in flight", e256)):
    if r:
        rows.append((label, f'{r["writes_per_s"]:.0f}', f'p50 {r["p50_ms"]:.2f} ms, p99 {r["p99_ms"]:.2f} ms, errors {r["errors"]}'))
    else:
        rows.append((label, "-", etcd_note))
for side, marks in (("leader", stage_leader), ("follower", stage_follower)):
    for stage, q in marks.items():
        rows.append((f"1 writer, {side} stage {stage} (ms)", f'{q.get("0.5", 0):.3f}', f'p99 {q.get("0.99", 0):.3f} ms'))
for label, xs, med in (("Starling", failovers, fo_p50), ("etcd", etcd_failovers, efo_p50)):
    if xs:
        rows.append((f"{label} leader failover p50 (ms)", f"{med:.0f}", f"p99 {pct(xs, 0.99):.0f}, max {max(xs):.0f}; all: " + ", ".join(f"{x:.0f}" for x in xs)))
if stability:
    rows.append(("elections, 256 in flight, throttled disk, follower stopped 1 s", f'{stability["elections"]}', f'term {stability["term_before"]} -> {stability["term_after"]}, leader {stability["leader_before"]} -> {stability["leader_after"]}; {stability["throttle"]}; load {stability["load"].get("writes_per_s", 0):.0f} writes/s, {stability["load"].get("errors")} errors'))
if rolling:
    rows.append(("rolling restart, longest write pause (ms)", f'{rolling["longest_pause_ms"]:.0f}', f'{rolling["writes"]} writes, {rolling["errors"]} failed attempts; pauses over 50 ms: {rolling["pauses_over_50ms"]}'))
for u, m in migrations.items():
    if not m:
        rows.append((f"migration {u} units", "-", "failed (see the log above)"))
        continue
    rows.append((f"migration {u} units: total (ms)", f'{m["total_ms"]}', f'precopy {m["precopy_ms"]}, catchup {m["catchup_ms"]}, fence {m["fence_ms"]}, activate {m["activate_ms"]}, log+reap {m["logtransfer_reap_ms"]}; {m["machines"]} agents'))
    rows.append((f"migration {u} units: lock→active (ms)", f'{m["lock_to_active_ms"]}', f'longest gap between acknowledged writes {m["write_unavailability_ms"]} ms; writes refused {m["writes_refused"]}, retried on the target {m["writes_retried_on_target"]}'))
    rows.append((f"migration {u} units: import", f'{m["import_mb_per_s"]:.2f}', f'MB/s; {m["import_records_per_s"]:.0f} records/s; {m["description_bytes"]} bytes, {m["records"]} records'))
    if m["staged_import_mb_per_s"] is None:
        rows.append((f"migration {u} units: staging + import commit", "-", f'{m["staged_bytes"]} bytes, too quick for the bench to time'))
    else:
        rows.append((f"migration {u} units: staging + import commit", f'{m["staged_import_mb_per_s"]:.2f}', f'MB/s; {m["staged_import_records_per_s"]:.0f} records/s; {m["staged_bytes"]} bytes (description and a {m["charm_mib"]} MiB charm) in {m["staged_import_ms"]} ms'))
    rows.append((f"migration {u} units: agents on target (ms)", f'{m["agents_all_on_target_ms_after_success"]}', f'after SUCCESS; {m["agents_switched"]}/{m["machines"]} switched'))
    for writers, p in pauses[u].items():
        if p:
            rows.append((f"migration {u} units: write pause p99 (ms), {writers} writer(s)", f'{p["write_pause_p99_ms"]}', f'over {p["migrations"]} migrations: p50 {p["write_pause_p50_ms"]}, max {p["write_pause_max_ms"]}; total p50 {p["total_p50_ms"]} ms; writes refused {p["writes_refused_all"]}'))
if fanin:
    rows.append(("agent fan-in: KiB of controller RSS per agent", f'{fanin["kib_per_agent"]:.1f}', f'{fanin["connected"]}/{fanin["agents"]} agents connected over {fanin["connections"]} TLS connections, {fanin["errors"]} errors; RSS {fanin["rss_machines_kib"]} → {fanin["rss_agents_kib"]} KiB'))
width = max(len(r[0]) for r in rows)
print()
print(f'{"figure":<{width}}  {"value":>8}  detail')
for name, value, detail in rows:
    print(f"{name:<{width}}  {value:>8}  {detail}")
figures = {
    "fsync_per_s": fsync["fsyncs_per_s"],
    "starling_1_writes_per_s": w(s1), "starling_1_p50_ms": s1 and s1["p50_ms"], "starling_1_p99_ms": s1 and s1["p99_ms"],
    "starling_256_writes_per_s": w(s256), "starling_256_p50_ms": s256 and s256["p50_ms"], "starling_256_p99_ms": s256 and s256["p99_ms"],
    "etcd_1_writes_per_s": w(e1), "etcd_1_p50_ms": e1 and e1["p50_ms"], "etcd_1_p99_ms": e1 and e1["p99_ms"],
    "etcd_256_writes_per_s": w(e256), "etcd_256_p50_ms": e256 and e256["p50_ms"], "etcd_256_p99_ms": e256 and e256["p99_ms"],
    "etcd": etcd_note,
    "fsync_p50_ms": fsync["p50_us"] / 1000, "loopback_rtt_p50_ms": fsync["loopback_rtt_p50_us"] / 1000,
    "two_fsyncs_plus_rtt_ms": phys_ms,
    "stages_1_writer_leader_ms": stage_leader, "stages_1_writer_follower_ms": stage_follower,
    "failover_ms": failovers, "failover_p50_ms": fo_p50, "failover_p99_ms": pct(failovers, 0.99),
    "failover_max_ms": max(failovers) if failovers else None, "election_timeout_max_ms": election_max,
    "etcd_failover_ms": etcd_failovers, "etcd_failover_p50_ms": efo_p50,
    "stability": stability, "elections_under_throttle": stability and stability["elections"],
    "rolling_restart": rolling, "rolling_restart_longest_pause_ms": rolling and rolling["longest_pause_ms"],
    "ratio_starling_1_over_fsync": ratio(w(s1), fsync["fsyncs_per_s"]),
    "ratio_starling_1_p50_over_physics": ratio(s1 and s1["p50_ms"], phys_ms),
    "ratio_failover_p50_over_etcd_p50": ratio(fo_p50, efo_p50),
    "ratio_failover_p99_over_etcd_p50": ratio(pct(failovers, 0.99), efo_p50),
    "ratio_starling_1_over_etcd_1": ratio(w(s1), w(e1)),
    "ratio_starling_256_over_etcd_256": ratio(w(s256), w(e256)),
    "ratio_failover_p50_over_election_max": ratio(fo_p50, election_max),
    "migrations": {str(u): m for u, m in migrations.items()},
    "migration_write_pause": {str(u): {str(w): p and {k: p[k] for k in ("migrations", "writers", "write_pause_p50_ms", "write_pause_p99_ms", "write_pause_max_ms", "write_pause_ms_each", "total_p50_ms", "writes_refused_all")} for w, p in ws.items()} for u, ws in pauses.items()},
    "fanin": fanin,
    "fanin_kib_per_agent": fanin and fanin["kib_per_agent"],
}
if len(migration_units) >= 2 and all(migrations.values()):
    small, large = migration_units[0], migration_units[-1]
    figures["ratio_migration_total_large_over_small"] = ratio(migrations[large]["total_ms"], migrations[small]["total_ms"])
    figures["ratio_migration_units_large_over_small"] = ratio(large, small)
    figures["ratio_migration_window_large_over_small"] = ratio(migrations[large]["lock_to_active_ms"], migrations[small]["lock_to_active_ms"])
print()
print("BENCH_JSON " + json.dumps(figures, sort_keys=True))
PY
