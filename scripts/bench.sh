#!/usr/bin/env bash
# Benchmarks a local 3-node controller against limits measured in the same run (docs/performance.md):
#   - the disk's single-writer fdatasync rate (cluster-tests' fsync_probe, same directory),
#   - committed writes/s and p50/p99 latency with 1 writer and with 256 in flight (256 B values,
#     cluster-tests' loadgen over TLS with the admin token),
#   - leader failover: SIGKILL of the leader to the next committed write (5 repetitions, the
#     killed node restarted between them),
#   - the same two loads against a 3-node etcd (Debian's etcd-server) on loopback, driven by the
#     Python `aetcd` client (Debian ships no etcd `benchmark` tool), when etcd can be had,
#   - live migration between two 3-node controllers of models of 1,000 and 10,000 units (one
#     simulated agent per 100 units; cluster-tests' migration_bench): total time, each phase, the
#     write-unavailability window seen by a client writing continuously, import MB/s and
#     records/s, and the time until every agent is on the target,
#   - agent fan-in: N simulated agents (default 10,000), each with its own TLS connection, Watch
#     stream and heartbeats, held by a 1-node controller (cluster-tests' agent_load): the node's
#     RSS per agent.
# Prints a table and ONE JSON line (prefixed "BENCH_JSON ") with the figures and ratios.
#
#   scripts/bench.sh [--duration SECS] [--failover-reps N] [--fsync-secs SECS] [--no-etcd] [--no-build]
#                    [--migration-units "1000 10000"] [--no-migration] [--only-migration]
#                    [--agents N] (0: no fan-in step)
#
# Only 127.0.0.1 is used; every wait and load is bounded in time; everything started is stopped.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export STARLING_BIN_DIR="${STARLING_BIN_DIR:-$repo/target/release}"
source "$repo/scripts/lib.sh"
scripts="$repo/scripts"

duration=10
failover_reps=5
fsync_secs=5
use_etcd=true
build=true
core=true
migration_units="1000 10000"
agents=10000
while (($#)); do
    case "$1" in
    --duration) duration="${2:?}"; shift 2 ;;
    --failover-reps) failover_reps="${2:?}"; shift 2 ;;
    --fsync-secs) fsync_secs="${2:?}"; shift 2 ;;
    --no-etcd) use_etcd=false; shift ;;
    --no-build) build=false; shift ;;
    --migration-units) migration_units="${2:?}"; shift 2 ;;
    --no-migration) migration_units=""; shift ;;
    --only-migration) core=false; use_etcd=false; agents=0; shift ;;
    --agents) agents="${2:?}"; shift 2 ;;
    *) echo "usage: $0 [--duration SECS] [--failover-reps N] [--fsync-secs SECS] [--no-etcd] [--no-build] [--migration-units \"N ...\"] [--no-migration] [--only-migration] [--agents N]" >&2; exit 2 ;;
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
cluster_started=false
fanin_started=false
migration_clusters=()

cleanup() {
    local rc=$? pid
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
step "fdatasync rate of $bench_dir (single writer, ${fsync_secs}s)"
"$bin/fsync_probe" --dir "$bench_dir" --seconds "$fsync_secs" >"$results/fsync.json"
cat "$results/fsync.json" >&2

# ---------------------------------------------------------------- live migration
for units in $migration_units; do
    step "migration of a $units-unit model between two 3-node controllers"
    migration_clusters=(migsrc migdst)
    "$scripts/bootstrap-cluster.sh" migsrc -n 3 >/dev/null
    "$scripts/bootstrap-cluster.sh" migdst -n 3 >/dev/null
    machines=$((units / 100 > 10 ? units / 100 : 10))
    "$bin/migration_bench" --source "$(cluster_dir migsrc)/registration.yaml" \
        --target "$(cluster_dir migdst)/registration.yaml" --units "$units" --machines "$machines" \
        --step-timeout 900 | tee "$results/migration-$units.txt" >&2
    sed -n 's/^MIGRATION_BENCH_JSON //p' "$results/migration-$units.txt" >"$results/migration-$units.json"
    "$scripts/stop-cluster.sh" migsrc >/dev/null 2>&1 || true
    "$scripts/stop-cluster.sh" migdst >/dev/null 2>&1 || true
    migration_clusters=()
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

# ---------------------------------------------------------------- Starling
if $core; then
step "bootstrapping a 3-node controller from $bin"
cluster_started=true
"$scripts/bootstrap-cluster.sh" bench -n 3 >/dev/null
registration="$(cluster_dir bench)/registration.yaml"

step "Starling: 1 writer for ${duration}s"
"$bin/loadgen" --registration "$registration" write --concurrency 1 --conns 1 \
    --duration-secs "$duration" --prefix bench >"$results/starling-1.json"
cat "$results/starling-1.json" >&2
step "Starling: 256 in flight for ${duration}s"
"$bin/loadgen" --registration "$registration" write --concurrency 256 --conns 8 \
    --duration-secs "$duration" --prefix bench >"$results/starling-256.json"
cat "$results/starling-256.json" >&2

members_healthy() {
    "$bin/ctl" show-controller bench --format json 2>/dev/null | python3 -c '
import json, sys
c = next(iter(json.load(sys.stdin).values()))
states = [m.get("state") for m in c.get("members", [])]
# Exactly one leader: a restarted leader claims its old term until it hears of the new one.
sys.exit(0 if c.get("leader") is not None and states.count("leader") == 1 and all(s in ("leader", "follower") for s in states) else 1)'
}

: >"$results/failover.jsonl"
for ((rep = 1; rep <= failover_reps; rep++)); do
    deadline=$((SECONDS + 60))
    until members_healthy; do
        ((SECONDS < deadline)) || die "controller not healthy before failover repetition $rep"
        sleep 0.2
    done
    leader_json="$("$bin/loadgen" --registration "$registration" leader)"
    leader_id="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])' <<<"$leader_json")"
    leader_addr="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["address"])' <<<"$leader_json")"
    leader_pid="$(recorded_pid bench "$leader_id")"
    pid_is_node "$leader_pid" "$(cluster_dir bench)/node-$leader_id" || die "pid of leader $leader_id unknown"
    step "failover $rep/$failover_reps: SIGKILL leader node $leader_id (pid $leader_pid)"
    "$bin/loadgen" --registration "$registration" failover --kill-pid "$leader_pid" \
        --kill-endpoint "$leader_addr" --timeout-secs 60 | tee -a "$results/failover.jsonl" >&2
    "$scripts/start-node.sh" bench "$leader_id" >/dev/null
done
deadline=$((SECONDS + 60))
until members_healthy; do
    ((SECONDS < deadline)) || break
    sleep 0.2
done
"$scripts/stop-cluster.sh" bench >/dev/null 2>&1 || true
cluster_started=false
fi

# ---------------------------------------------------------------- etcd
etcd_note="not measured"
if $use_etcd; then
    if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
            step "installing etcd-server and etcd-client"
            DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq etcd-server etcd-client >&2 ||
                etcd_note="apt-get install etcd-server etcd-client failed"
        else
            etcd_note="etcd not installed and not root"
        fi
    fi
fi
venv="$persistent_work/bench-venv"
if $use_etcd && command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
    if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import aetcd' 2>/dev/null; then
        step "installing the aetcd Python client in $venv"
        python3 -m venv "$venv" >&2 && timeout 600 "$venv/bin/pip" install -q aetcd >&2 ||
            etcd_note="pip install aetcd failed"
    fi
fi
if $use_etcd && command -v etcd >/dev/null && "$venv/bin/python" -c 'import aetcd' 2>/dev/null; then
    step "starting a 3-node etcd ($(etcd --version | head -n 1)) on loopback"
    mapfile -t eports < <(free_ports 6)
    initial=""
    for i in 1 2 3; do
        initial+="${initial:+,}e$i=http://127.0.0.1:${eports[2 * i - 1]}"
    done
    endpoints=""
    for i in 1 2 3; do
        cport="${eports[2 * i - 2]}"
        pport="${eports[2 * i - 1]}"
        endpoints+="${endpoints:+,}127.0.0.1:$cport"
        mkdir -p "$bench_dir/etcd-$i"
        etcd --name "e$i" --data-dir "$bench_dir/etcd-$i/data" \
            --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
            --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
            --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token "bench-$$" \
            >"$bench_dir/etcd-$i/log" 2>&1 </dev/null &
        etcd_pids+=($!)
    done
    deadline=$((SECONDS + 60))
    until ETCDCTL_API=3 timeout 10 etcdctl --endpoints="$endpoints" endpoint health >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "etcd not healthy after 60s (logs in $bench_dir/etcd-*/log)"
        sleep 0.3
    done
    etcd_leader="$(ETCDCTL_API=3 timeout 10 etcdctl --endpoints="$endpoints" endpoint status -w json | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    s = e["Status"]
    if s["header"]["member_id"] == s["leader"]:
        print(e["Endpoint"])')"
    [[ -n "$etcd_leader" ]] || die "no etcd leader found"
    cat >"$bench_dir/etcd_load.py" <<'PY'
"""Write load against etcd with aetcd (grpc.aio): CONCURRENCY puts in flight for DURATION."""
import asyncio, itertools, json, random, string, sys, time
import aetcd

async def main(endpoint, concurrency, duration, value_bytes=256, keys=10000, conns=8):
    host, port = endpoint.rsplit(":", 1)
    conns = min(conns, concurrency)
    clients = [aetcd.Client(host=host, port=int(port), timeout=10) for _ in range(conns)]
    for c in clients:
        await c.connect()
    value = "".join(random.choice(string.ascii_lowercase) for _ in range(value_bytes)).encode()
    for i, c in enumerate(clients):
        await c.put(f"bench-{i}".encode(), value)
    counter = itertools.count()
    latencies, errors = [], [0]
    deadline = time.monotonic() + duration

    async def worker(c):
        while time.monotonic() < deadline:
            i = next(counter)
            t = time.perf_counter()
            try:
                await c.put(f"bench-{i % keys}".encode(), value)
                latencies.append(time.perf_counter() - t)
            except Exception:
                errors[0] += 1

    start = time.monotonic()
    await asyncio.gather(*(worker(clients[i % conns]) for i in range(concurrency)))
    elapsed = time.monotonic() - start
    for c in clients:
        await c.close()
    latencies.sort()
    pct = lambda p: latencies[max(0, min(len(latencies) - 1, int(len(latencies) * p + 0.999999) - 1))] * 1000 if latencies else 0.0
    print(json.dumps({"concurrency": concurrency, "writes": len(latencies), "errors": errors[0],
                      "seconds": elapsed, "writes_per_s": len(latencies) / elapsed,
                      "p50_ms": pct(0.50), "p99_ms": pct(0.99), "value_bytes": value_bytes,
                      "endpoints": [endpoint], "client": "python aetcd"}))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
PY
    step "etcd: 1 writer for ${duration}s (leader $etcd_leader)"
    timeout $((duration + 120)) "$venv/bin/python" "$bench_dir/etcd_load.py" "$etcd_leader" 1 "$duration" >"$results/etcd-1.json"
    cat "$results/etcd-1.json" >&2
    step "etcd: 256 in flight for ${duration}s"
    timeout $((duration + 120)) "$venv/bin/python" "$bench_dir/etcd_load.py" "$etcd_leader" 256 "$duration" >"$results/etcd-256.json"
    cat "$results/etcd-256.json" >&2
    etcd_note="$(etcd --version | head -n 1 | tr -d '\n'), plaintext, python aetcd client"
fi

# ---------------------------------------------------------------- report
# The nodes' election timeout max: ctld's default unless STARLING_CTLD_ARGS overrides it.
election_timeout_max_ms="$("$bin/ctld" run --help |
    sed -n '/--election-timeout-max-ms/,/default:/s/.*\[default: \([0-9]*\)\].*/\1/p' | head -n 1)"
[[ -n "$election_timeout_max_ms" ]] || die "could not read ctld's default --election-timeout-max-ms"
read -r -a ctld_args <<<"${STARLING_CTLD_ARGS:-}"
for ((i = 0; i < ${#ctld_args[@]}; i++)); do
    [[ "${ctld_args[i]}" != "--election-timeout-max-ms" ]] || election_timeout_max_ms="${ctld_args[i + 1]}"
done
python3 - "$results" "$etcd_note" "$election_timeout_max_ms" "$migration_units" <<'PY'
import json, os, statistics, sys
results, etcd_note, election_max = sys.argv[1], sys.argv[2], float(sys.argv[3])
migration_units = [int(u) for u in sys.argv[4].split()]
def load(name):
    path = os.path.join(results, name)
    return json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else None
fsync = load("fsync.json")
s1, s256 = load("starling-1.json"), load("starling-256.json")
e1, e256 = load("etcd-1.json"), load("etcd-256.json")
failover_path = os.path.join(results, "failover.jsonl")
failovers = [json.loads(l)["failover_ms"] for l in open(failover_path) if l.strip()] if os.path.exists(failover_path) else []
migrations = {u: load(f"migration-{u}.json") for u in migration_units}
fanin = load("fanin.json")
ratio = lambda a, b: round(a / b, 3) if a is not None and b else None
w = lambda r: r["writes_per_s"] if r else None
fo_p50 = statistics.median(failovers) if failovers else None
rows = [
    ("disk fdatasync/s (1 writer)", f'{fsync["fsyncs_per_s"]:.0f}', f'p50 {fsync["p50_us"]/1000:.2f} ms, p99 {fsync["p99_us"]/1000:.2f} ms'),
]
for label, r in (("starling writes/s, 1 writer", s1), ("starling writes/s, 256 in flight", s256),
                 ("etcd writes/s, 1 writer", e1), ("etcd writes/s, 256 in flight", e256)):
    if r:
        rows.append((label, f'{r["writes_per_s"]:.0f}', f'p50 {r["p50_ms"]:.2f} ms, p99 {r["p99_ms"]:.2f} ms, errors {r["errors"]}'))
    else:
        rows.append((label, "-", etcd_note))
if failovers:
    rows.append(("leader failover p50 (ms)", f"{fo_p50:.0f}", "all: " + ", ".join(f"{x:.0f}" for x in failovers) + f"; election timeout max {election_max:.0f} ms"))
for u, m in migrations.items():
    if not m:
        rows.append((f"migration {u} units", "-", "failed (see the log above)"))
        continue
    rows.append((f"migration {u} units: total (ms)", f'{m["total_ms"]}', f'quiesce {m["quiesce_ms"]}, import {m["import_ms"]}, validation {m["validation_ms"]}, activate {m["activate_ms"]}, log+reap {m["logtransfer_reap_ms"]}; {m["machines"]} agents'))
    rows.append((f"migration {u} units: lock→active (ms)", f'{m["lock_to_active_ms"]}', f'write unavailability {m["write_unavailability_ms"]} ms (longest gap between acknowledged writes)'))
    rows.append((f"migration {u} units: import", f'{m["import_mb_per_s"]:.2f}', f'MB/s; {m["import_records_per_s"]:.0f} records/s; {m["description_bytes"]} bytes, {m["records"]} records'))
    rows.append((f"migration {u} units: agents on target (ms)", f'{m["agents_all_on_target_ms_after_success"]}', f'after SUCCESS; {m["agents_switched"]}/{m["machines"]} switched'))
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
    "failover_ms": failovers, "failover_p50_ms": fo_p50, "election_timeout_max_ms": election_max,
    "ratio_starling_1_over_fsync": ratio(w(s1), fsync["fsyncs_per_s"]),
    "ratio_starling_1_over_etcd_1": ratio(w(s1), w(e1)),
    "ratio_starling_256_over_etcd_256": ratio(w(s256), w(e256)),
    "ratio_failover_p50_over_election_max": ratio(fo_p50, election_max),
    "migrations": {str(u): m for u, m in migrations.items()},
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
