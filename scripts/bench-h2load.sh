#!/usr/bin/env bash
# Measures a release tierkv with h2load (an independent HTTP/2 load tool), next to the gRPC health check
# of the same server and an etcd baseline over etcd's own gRPC API.
#
#   scripts/bench-h2load.sh                 # 3 interleaved rounds of 4 s per RPC, 16 connections x 16 streams
#   ROUNDS=5 DURATION=8 scripts/bench-h2load.sh
#   SERVER_BIN=./target/release/tierkv scripts/bench-h2load.sh    # measure a given binary (tierkv refuses
#                                           # unknown TIERKV_* variables, hence the name)
#   ETCD=0 scripts/bench-h2load.sh          # skip the etcd baseline
#   VALUE=text scripts/bench-h2load.sh      # 15-byte text values instead of 15-byte JSON values
#   SCENARIO=cache-under-writes scripts/bench-h2load.sh
#                                           # CacheService.Get of one key from memory, alone and while a
#                                           # writer runs BatchWrites of 100 other keys of the same namespace
#                                           # (cache:); WRITER_CLIENTS x WRITER_STREAMS (default 2 x 4)
#   SCENARIO=watch scripts/bench-h2load.sh  # KvService.Put of one key (bench:get) through h2load while
#                                           # WATCHERS (default "0 10 100") KvService.Watch streams on its
#                                           # prefix (bench:) are held by `tierkv-watch-bench --attach`
#                                           # (8 per connection); Put req/s per count and its ratio to 0,
#                                           # the CPU per Put of the server and of the watchers' process,
#                                           # and the events (and responses) the watchers received; WATCH_BIN names the
#                                           # watcher binary (built with cargo when missing)
#   RPS=1000 scripts/bench-h2load.sh        # every h2load client at a fixed rate (requests/s each), so
#                                           # two servers' CPU per request compare at the same load
#   SCENARIO=etcd scripts/bench-h2load.sh   # the etcd engine: a 3-member etcd cluster on loopback (data on
#                                           # /dev/shm when there is one, else the temporary directory) and
#                                           # two tierkv servers A and B over it; per round KvService Get/Put
#                                           # and CacheService.Get from memory on A beside A's health check,
#                                           # and etcd's own Range/Put sent straight to the etcd leader, same
#                                           # h2load settings; then tierkv-replica-bench (REPLICA_BIN, built
#                                           # when missing) measures B's cache invalidation delay after writes
#                                           # through A (SAMPLES, default 500)
#
# Every RPC of a round runs against the same server process, one after the other, and rounds interleave
# (health, Get, Put, BatchGet, health, Get, ...), so slow drifts of the machine hit every RPC alike. The
# script prints each run, then the median per RPC and its ratio to the median health check, and the
# server's CPU time per request (user + system, from /proc/<pid>/stat), which a busy machine disturbs far
# less than throughput. h2load only sees HTTP status codes, so every request body is first sent once with
# curl and its `grpc-status` must be 0.
#
# Installs `nghttp2-client` (h2load) and `etcd-server` with apt-get when they are missing (Debian/Ubuntu).
# Everything it starts (tierkv, etcd) listens on 127.0.0.1, writes under a temporary directory, and is
# killed on exit. Total time: about ROUNDS x DURATION x 8 seconds plus start-up.
set -euo pipefail

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-4}"
CLIENTS="${CLIENTS:-16}"
STREAMS="${STREAMS:-16}"
THREADS="${THREADS:-1}"
ETCD="${ETCD:-1}"
VALUE="${VALUE:-json}"
SCENARIO="${SCENARIO:-rpcs}"
WRITER_CLIENTS="${WRITER_CLIENTS:-2}"
WRITER_STREAMS="${WRITER_STREAMS:-4}"
WATCHERS="${WATCHERS:-0 10 100}"
# Requests per second per h2load client (unset: as fast as answered). A fixed rate every server can
# sustain makes the CPU per request comparable between two servers without throughput effects.
RPS="${RPS:-}"
case "$SCENARIO" in
    rpcs) ;;
    cache-under-writes) ETCD=0 ;;
    watch) ETCD=0 ;;
    etcd) ETCD=1 ;;
    *) echo "unknown SCENARIO $SCENARIO (rpcs, cache-under-writes, watch, etcd)" >&2; exit 1 ;;
esac
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

need() { command -v "$1" >/dev/null 2>&1; }
install_packages() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing $* (apt-get)" >&2
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
need h2load || install_packages nghttp2-client
if [ "$ETCD" = 1 ] && ! need etcd; then install_packages etcd-server; fi
need curl || install_packages curl
need python3 || { echo "python3 is required to build the request bodies" >&2; exit 1; }

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ "$SCENARIO" = watch ] && [ -z "${WATCH_BIN:-}" ]; then
    WATCH_BIN="$TARGET_DIR/release/tierkv-watch-bench"
    if [ ! -x "$WATCH_BIN" ]; then
        (cd "$ROOT" && cargo build --release --locked -p tierkv-bench --bin tierkv-watch-bench)
    fi
fi
if [ "$SCENARIO" = etcd ] && [ -z "${REPLICA_BIN:-}" ]; then
    REPLICA_BIN="$TARGET_DIR/release/tierkv-replica-bench"
    if [ ! -x "$REPLICA_BIN" ]; then
        (cd "$ROOT" && cargo build --release --locked -p tierkv-bench --bin tierkv-replica-bench)
    fi
fi
if [ -z "${SERVER_BIN:-}" ]; then
    SERVER_BIN="$TARGET_DIR/release/tierkv"
    if [ ! -x "$SERVER_BIN" ]; then
        (cd "$ROOT" && cargo build --release --locked -p tierkv --bin tierkv)
    fi
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tierkv-h2load.XXXXXX")"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
    if [ -n "${ETCD_DIR:-}" ]; then rm -rf "$ETCD_DIR"; fi
}
trap cleanup EXIT INT TERM

# CPU time (user + system) of a process so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICKS_PER_SEC="$(getconf CLK_TCK)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# gRPC request bodies: a 5-byte frame header (no compression, big-endian length) and the protobuf message.
python3 - "$WORK" "$VALUE" <<'EOF'
import struct, sys
out = sys.argv[1]

def varint(n):
    b = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            b.append(byte | 0x80)
        else:
            b.append(byte)
            return bytes(b)

def field(number, payload):          # length-delimited field
    return varint(number << 3 | 2) + varint(len(payload)) + payload

def frame(message):
    return b"\x00" + struct.pack(">I", len(message)) + message

def json_object(pairs):              # google.protobuf.Value{struct_value: Struct{fields}}
    fields = b"".join(
        field(1, field(1, k.encode()) + field(2, field(3, v.encode())))  # map entry: key, Value{string_value}
        for k, v in pairs)
    return field(5, fields)

if sys.argv[2] == "text":
    value = field(2, b'{"user":"adam"}')        # text: field 2
else:
    value = field(3, json_object([("user", "adam")]))  # {"user":"adam"}, a 15-byte JSON value: field 3
bodies = {
    "health": field(1, b"tierkv.v1.KvService"),
    "get": field(1, b"bench:get"),
    "put": field(1, b"bench:get") + value,
    "batchget": b"".join(field(1, b"bench:batch:%03d" % i) for i in range(100)),
    "seed": b"".join(field(1, field(1, field(1, b"bench:batch:%03d" % i) + value))
                     for i in range(100)),
    # CacheService: a key put with a one-day memory TTL, read back from memory.
    "cache_seed": field(1, b"cache:bench:get") + value + field(6, bytes([1 << 3]) + varint(86400)),
    "cache_get": field(1, b"cache:bench:get"),
    # A burst of writes to other keys of the cache: namespace: one commit of 100 puts.
    "cache_writes": b"".join(field(1, field(1, field(1, b"cache:bench:w:%03d" % i) + value))
                             for i in range(100)),
    "etcd_range": field(1, b"bench:get"),
    "etcd_range_serializable": field(1, b"bench:get") + bytes([7 << 3, 1]),
    # etcd keeps every revision of a key until compacted: puts go to another key than the one Range reads,
    # or each round of puts would slow the next rounds' reads.
    "etcd_put": field(1, b"bench:put") + field(2, b'{"user":"adam"}'),
    "etcd_seed": field(1, b"bench:get") + field(2, b'{"user":"adam"}'),
    # SCENARIO=etcd: tierkv's Put, like etcd's, writes another key than the one Get reads.
    "put_other": field(1, b"bench:put") + value,
}
for name, message in bodies.items():
    with open(f"{out}/{name}.bin", "wb") as f:
        f.write(frame(message))
EOF

# Sends one body with curl and fails unless the gRPC status is 0 (h2load would count errors as successes).
grpc_call() {
    local url="$1" body="$2"
    local headers="$WORK/headers.txt"
    curl -sS --http2-prior-knowledge -o /dev/null -D "$headers" --max-time 10 \
        -H 'content-type: application/grpc' -H 'te: trailers' --data-binary "@$body" "$url"
    if ! grep -qi '^grpc-status: 0' "$headers"; then
        echo "gRPC call to $url failed:" >&2
        cat "$headers" >&2
        exit 1
    fi
}

# One h2load run of a body against a URL; prints "req/s|succeeded|mean latency" or fails the script.
h2load_run() {
    local name="$1" url="$2" body="$3" clients="$4" streams="$5" duration="$6" output rps done_requests failed non2xx mean
    output="$(h2load -c "$clients" -m "$streams" -t "$THREADS" -D "$duration" ${RPS:+--rps="$RPS"} \
        -H 'content-type: application/grpc' -H 'te: trailers' -d "$WORK/$body.bin" "$url" 2>&1)"
    rps="$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' <<<"$output")"
    done_requests="$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' <<<"$output")"
    failed="$(sed -n 's/^requests: .* \([0-9]*\) failed.*/\1/p' <<<"$output")"
    non2xx="$(sed -n 's/^status codes: .*, \([0-9]*\) 4xx, \([0-9]*\) 5xx/\1 \2/p' <<<"$output")"
    mean="$(awk '/^time for request:/ {print $6}' <<<"$output")"
    if [ -z "$rps" ] || [ "${failed:-0}" != 0 ] || [ "$non2xx" != "0 0" ]; then
        echo "h2load run of $name failed:" >&2
        echo "$output" >&2
        exit 1
    fi
    echo "$rps|$done_requests|$mean"
}

# Waits up to 60 s for a listener on the port while the process is alive.
wait_for_port() {
    local port="$1" pid="$2" log="$3" i
    for i in $(seq 1 600); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$port; log:" >&2
    tail -20 "$log" >&2
    exit 1
}

# SCENARIO=etcd: the etcd engine, against etcd itself, on one 3-member cluster.
if [ "$SCENARIO" = etcd ]; then
    if [ -d /dev/shm ] && [ -w /dev/shm ]; then
        ETCD_DIR="$(mktemp -d /dev/shm/tierkv-h2load-etcd.XXXXXX)"
    else
        ETCD_DIR="$WORK/etcd"
        mkdir -p "$ETCD_DIR"
    fi
    # The members' flags: those of the test cluster (tests/common/etcd.rs).
    ETCD_FLAGS=(--max-txn-ops 10240 --max-request-bytes 33554432 --heartbeat-interval 50
        --election-timeout 500 --snapshot-count 10000 --log-level error)
    MEMBER_CLIENT_PORTS=()
    MEMBER_PEER_PORTS=()
    INITIAL_CLUSTER=""
    for n in 0 1 2; do
        MEMBER_CLIENT_PORTS+=("$(free_port)")
        MEMBER_PEER_PORTS+=("$(free_port)")
        INITIAL_CLUSTER="${INITIAL_CLUSTER:+$INITIAL_CLUSTER,}m$n=http://127.0.0.1:${MEMBER_PEER_PORTS[$n]}"
    done
    MEMBER_PIDS=()
    ENDPOINTS=""
    for n in 0 1 2; do
        client="http://127.0.0.1:${MEMBER_CLIENT_PORTS[$n]}"
        peer="http://127.0.0.1:${MEMBER_PEER_PORTS[$n]}"
        etcd --name "m$n" --data-dir "$ETCD_DIR/m$n" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$INITIAL_CLUSTER" --initial-cluster-state new \
            --initial-cluster-token tierkv-bench "${ETCD_FLAGS[@]}" >"$WORK/etcd-m$n.log" 2>&1 &
        PIDS+=($!)
        MEMBER_PIDS+=($!)
        ENDPOINTS="${ENDPOINTS:+$ENDPOINTS,}$client"
    done
    for n in 0 1 2; do wait_for_port "${MEMBER_CLIENT_PORTS[$n]}" "${MEMBER_PIDS[$n]}" "$WORK/etcd-m$n.log"; done
    # The leader: etcd's own Range and Put are sent to it (the fastest member for both: a linearizable
    # read on a follower first asks the leader).
    LEADER=""
    for _ in $(seq 1 100); do
        LEADER="$(ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" endpoint status -w json 2>/dev/null | python3 -c '
import json, sys
for status in json.load(sys.stdin):
    header = status["Status"]["header"]
    if status["Status"]["leader"] == header["member_id"]:
        print(status["Endpoint"])
' || true)"
        [ -n "$LEADER" ] && break
        sleep 0.1
    done
    [ -n "$LEADER" ] || { echo "the etcd cluster elected no leader" >&2; tail -5 "$WORK"/etcd-m*.log >&2; exit 1; }
    etcd_ticks() { local total=0 pid; for pid in "${MEMBER_PIDS[@]}"; do total=$((total + $(cpu_ticks "$pid"))); done; echo "$total"; }

    start_replica() {
        local name="$1" port
        port="$(free_port)"
        TIERKV_ENGINE_KIND=etcd TIERKV_ENGINE_ETCD_ENDPOINTS="$ENDPOINTS" TIERKV_ENGINE_ETCD_PREFIX=tierkv-bench/ \
            TIERKV_ENGINE_ETCD_MAX_TXN_OPS=10240 TIERKV_ENGINE_ETCD_MAX_REQUEST_BYTES=33554432 \
            "$SERVER_BIN" serve --listen "127.0.0.1:$port" --data-dir "$WORK/tierkv-$name" \
            --metrics-listen 127.0.0.1:0 >"$WORK/tierkv-$name.log" 2>&1 &
        PIDS+=($!)
        eval "REPLICA_${name}_PID=$!"
        eval "REPLICA_${name}_PORT=$port"
    }
    start_replica A
    start_replica B
    wait_for_port "$REPLICA_A_PORT" "$REPLICA_A_PID" "$WORK/tierkv-A.log"
    wait_for_port "$REPLICA_B_PORT" "$REPLICA_B_PID" "$WORK/tierkv-B.log"
    A="http://127.0.0.1:$REPLICA_A_PORT"
    B="http://127.0.0.1:$REPLICA_B_PORT"

    # name, url, body; in the order each round runs them. tierkv's go to A.
    ETCD_BENCHES=(
        "health|$A/grpc.health.v1.Health/Check|health"
        "Get|$A/tierkv.v1.KvService/Get|get"
        "etcd Range|$LEADER/etcdserverpb.KV/Range|etcd_range"
        "Put|$A/tierkv.v1.KvService/Put|put_other"
        "etcd Put|$LEADER/etcdserverpb.KV/Put|etcd_put"
        "CacheService/Get memory|$A/tierkv.v1.CacheService/Get|cache_get"
    )
    grpc_call "$A/tierkv.v1.KvService/Put" "$WORK/put.bin"
    grpc_call "$A/tierkv.v1.CacheService/Put" "$WORK/cache_seed.bin"
    grpc_call "$LEADER/etcdserverpb.KV/Put" "$WORK/etcd_seed.bin"
    for bench in "${ETCD_BENCHES[@]}"; do
        IFS='|' read -r _ url body <<<"$bench"
        grpc_call "$url" "$WORK/$body.bin"
    done

    echo "etcd: 3 members on 127.0.0.1 (data on $ETCD_DIR; ${ETCD_FLAGS[*]}), leader $LEADER"
    echo "tierkv: $SERVER_BIN, replicas A $A (pid $REPLICA_A_PID) and B $B (pid $REPLICA_B_PID), prefix tierkv-bench/"
    echo "$VALUE values; h2load -c $CLIENTS -m $STREAMS -t $THREADS -D $DURATION, $ROUNDS rounds; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    RESULTS="$WORK/results.txt"
    : >"$RESULTS"
    for round in $(seq 1 "$ROUNDS"); do
        for bench in "${ETCD_BENCHES[@]}"; do
            IFS='|' read -r name url body <<<"$bench"
            a_before="$(cpu_ticks "$REPLICA_A_PID")"
            etcd_before="$(etcd_ticks)"
            result="$(h2load_run "$name" "$url" "$body" "$CLIENTS" "$STREAMS" "$DURATION")"
            a_ticks="$(( $(cpu_ticks "$REPLICA_A_PID") - a_before ))"
            etcd_ticks_run="$(( $(etcd_ticks) - etcd_before ))"
            IFS='|' read -r rps done_requests _ <<<"$result"
            a_us="$(python3 -c "print($a_ticks / $TICKS_PER_SEC * 1e6 / max($done_requests, 1))")"
            etcd_us="$(python3 -c "print($etcd_ticks_run / $TICKS_PER_SEC * 1e6 / max($done_requests, 1))")"
            printf 'round %d  %-24s %10.0f req/s %9.1f us tierkv A CPU/req %9.1f us etcd CPU/req (3 members)\n' \
                "$round" "$name" "$rps" "$a_us" "$etcd_us"
            printf '%s|%s|%s|%s\n' "$name" "$rps" "$a_us" "$etcd_us" >>"$RESULTS"
        done
    done
    echo
    python3 - "$RESULTS" <<'EOF'
import statistics, sys
runs, a_cpu, etcd_cpu = {}, {}, {}
for line in open(sys.argv[1]):
    name, rps, a_us, etcd_us = line.rstrip("\n").split("|")
    runs.setdefault(name, []).append(float(rps))
    a_cpu.setdefault(name, []).append(float(a_us))
    etcd_cpu.setdefault(name, []).append(float(etcd_us))
med = {name: statistics.median(values) for name, values in runs.items()}
against = {"Get": "etcd Range", "Put": "etcd Put", "CacheService/Get memory": "health"}
print(f"{'RPC':<26}{'median req/s':>14}{'ratio':>22}{'tierkv CPU us':>15}{'etcd CPU us':>13}   runs (req/s)")
for name, values in runs.items():
    ratio = f"{med[name] / med[against[name]]:.2f}x {against[name]}" if name in against else ""
    print(f"{name:<26}{med[name]:>14,.0f}{ratio:>22}{statistics.median(a_cpu[name]):>15.1f}"
          f"{statistics.median(etcd_cpu[name]):>13.1f}   " + " ".join(f"{v:,.0f}" for v in values))
print()
print("targets (issue 17): Get and Put >= 0.8x etcd Range and Put; CacheService/Get memory >= 0.9x health.")
print("CPU columns: CPU time per request of tierkv A and of the three etcd members together, same run.")
EOF
    echo
    echo "cross-replica invalidation: $REPLICA_BIN --a $A --b $B --samples ${SAMPLES:-500}"
    "$REPLICA_BIN" --a "$A" --b "$B" --samples "${SAMPLES:-500}"
    exit 0
fi

TIERKV_PORT="$(free_port)"
"$SERVER_BIN" serve --listen "127.0.0.1:$TIERKV_PORT" --data-dir "$WORK/tierkv" --metrics-listen 127.0.0.1:0 \
    >"$WORK/tierkv.log" 2>&1 &
PIDS+=($!)
TIERKV_PID=$!
wait_for_port "$TIERKV_PORT" "$TIERKV_PID" "$WORK/tierkv.log"
TIERKV="http://127.0.0.1:$TIERKV_PORT"

if [ "$ETCD" = 1 ]; then
    ETCD_PORT="$(free_port)"
    ETCD_PEER_PORT="$(free_port)"
    etcd --name bench --data-dir "$WORK/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER_PORT" \
        --log-level error >"$WORK/etcd.log" 2>&1 &
    PIDS+=($!)
    ETCD_PID=$!
    wait_for_port "$ETCD_PORT" "$ETCD_PID" "$WORK/etcd.log"
    ETCD_URL="http://127.0.0.1:$ETCD_PORT"
fi

# name, url, body, server pid; in the order each round runs them.
BENCHES=(
    "health|$TIERKV/grpc.health.v1.Health/Check|health|$TIERKV_PID"
    "Get|$TIERKV/tierkv.v1.KvService/Get|get|$TIERKV_PID"
    "Put|$TIERKV/tierkv.v1.KvService/Put|put|$TIERKV_PID"
    "BatchGet x100|$TIERKV/tierkv.v1.KvService/BatchGet|batchget|$TIERKV_PID"
    "CacheService/Get memory|$TIERKV/tierkv.v1.CacheService/Get|cache_get|$TIERKV_PID"
)
if [ "$ETCD" = 1 ]; then
    BENCHES+=(
        "etcd Range|$ETCD_URL/etcdserverpb.KV/Range|etcd_range|$ETCD_PID"
        "etcd Range serializable|$ETCD_URL/etcdserverpb.KV/Range|etcd_range_serializable|$ETCD_PID"
        "etcd Put|$ETCD_URL/etcdserverpb.KV/Put|etcd_put|$ETCD_PID"
    )
fi

# Seed the keys read back, and check every body once.
grpc_call "$TIERKV/tierkv.v1.KvService/Put" "$WORK/put.bin"
grpc_call "$TIERKV/tierkv.v1.KvService/BatchWrite" "$WORK/seed.bin"
grpc_call "$TIERKV/tierkv.v1.CacheService/Put" "$WORK/cache_seed.bin"
[ "$ETCD" = 1 ] && grpc_call "$ETCD_URL/etcdserverpb.KV/Put" "$WORK/etcd_seed.bin"
for bench in "${BENCHES[@]}"; do
    IFS='|' read -r _ url body _ <<<"$bench"
    grpc_call "$url" "$WORK/$body.bin"
done


if [ "$SCENARIO" = cache-under-writes ]; then
    grpc_call "$TIERKV/tierkv.v1.KvService/BatchWrite" "$WORK/cache_writes.bin"
    grpc_call "$TIERKV/tierkv.v1.CacheService/Get" "$WORK/cache_get.bin"
    echo "tierkv: $SERVER_BIN (pid $TIERKV_PID); CacheService.Get from memory: h2load -c $CLIENTS -m $STREAMS -t $THREADS -D $DURATION;"
    echo "writer: KvService.BatchWrite of 100 other cache: keys, h2load -c $WRITER_CLIENTS -m $WRITER_STREAMS; $ROUNDS rounds"
    RESULTS="$WORK/results.txt"
    : >"$RESULTS"
    for round in $(seq 1 "$ROUNDS"); do
        alone="$(h2load_run "Get alone" "$TIERKV/tierkv.v1.CacheService/Get" cache_get "$CLIENTS" "$STREAMS" "$DURATION")"
        # The writer starts a second before the reader and ends a second after it.
        h2load_run "writer" "$TIERKV/tierkv.v1.KvService/BatchWrite" cache_writes \
            "$WRITER_CLIENTS" "$WRITER_STREAMS" "$((DURATION + 2))" >"$WORK/writer.txt" &
        writer=$!
        sleep 1
        under="$(h2load_run "Get under writes" "$TIERKV/tierkv.v1.CacheService/Get" cache_get "$CLIENTS" "$STREAMS" "$DURATION")"
        wait "$writer"
        writes="$(cat "$WORK/writer.txt")"
        IFS='|' read -r alone_rps _ alone_mean <<<"$alone"
        IFS='|' read -r under_rps _ under_mean <<<"$under"
        IFS='|' read -r writer_rps _ _ <<<"$writes"
        printf 'round %d  Get alone %9.0f req/s (mean %s)   Get under writes %9.0f req/s (mean %s)   writer %6.0f BatchWrite/s\n' \
            "$round" "$alone_rps" "$alone_mean" "$under_rps" "$under_mean" "$writer_rps"
        printf '%s|%s|%s\n' "$alone_rps" "$under_rps" "$writer_rps" >>"$RESULTS"
    done
    python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = [tuple(map(float, line.split("|"))) for line in open(sys.argv[1])]
alone = statistics.median(r[0] for r in rows)
under = statistics.median(r[1] for r in rows)
writer = statistics.median(r[2] for r in rows)
print()
print(f"median: Get alone {alone:,.0f} req/s; Get under writes {under:,.0f} req/s ({under / alone:.2f}x); "
      f"writer {writer:,.0f} BatchWrite/s ({writer * 100:,.0f} keys/s)")
EOF
    exit 0
fi

if [ "$SCENARIO" = watch ]; then
    echo "tierkv: $SERVER_BIN (pid $TIERKV_PID); KvService.Put of bench:get ($VALUE value): h2load -c $CLIENTS -m $STREAMS -t $THREADS -D $DURATION;"
    echo "watchers on bench: held by $WATCH_BIN --attach; counts: $WATCHERS; $ROUNDS rounds"
    RESULTS="$WORK/results.txt"
    : >"$RESULTS"
    for round in $(seq 1 "$ROUNDS"); do
        for watchers in $WATCHERS; do
            holder=""
            if [ "$watchers" -gt 0 ]; then
                "$WATCH_BIN" --attach "$TIERKV" --hold "$watchers" --prefix bench: >"$WORK/watchers.txt" 2>&1 &
                holder=$!
                PIDS+=("$holder")
                for _ in $(seq 1 300); do
                    grep -q '^watching' "$WORK/watchers.txt" && break
                    kill -0 "$holder" 2>/dev/null || { cat "$WORK/watchers.txt" >&2; exit 1; }
                    sleep 0.1
                done
                grep -q '^watching' "$WORK/watchers.txt" || { echo "the watchers did not start" >&2; exit 1; }
            fi
            ticks_before="$(cpu_ticks "$TIERKV_PID")"
            holder_before=0
            if [ -n "$holder" ]; then holder_before="$(cpu_ticks "$holder")"; fi
            result="$(h2load_run "Put with $watchers watchers" "$TIERKV/tierkv.v1.KvService/Put" put "$CLIENTS" "$STREAMS" "$DURATION")"
            ticks="$(( $(cpu_ticks "$TIERKV_PID") - ticks_before ))"
            holder_ticks=0
            if [ -n "$holder" ]; then holder_ticks="$(( $(cpu_ticks "$holder") - holder_before ))"; fi
            received=0
            responses=0
            disorder=0
            if [ -n "$holder" ]; then
                # Let the watchers drain what is in flight, then stop them.
                sleep 1
                kill -TERM "$holder"
                wait "$holder" || true
                received="$(sed -n 's/^received \([0-9]*\) events/\1/p' "$WORK/watchers.txt")"
                responses="$(sed -n 's/^in \([0-9]*\) responses/\1/p' "$WORK/watchers.txt")"
                # Each stream must see every version of the key once, in order.
                disorder="$(sed -n 's/^events out of order.*: \([0-9]*\)$/\1/p' "$WORK/watchers.txt")"
                [ "${disorder:-0}" = 0 ] || echo "WARNING: $disorder events out of order, repeated or missing" >&2
            fi
            IFS='|' read -r rps done_requests mean <<<"$result"
            cpu_us="$(python3 -c "print($ticks / $TICKS_PER_SEC * 1e6 / max($done_requests, 1))")"
            holder_us="$(python3 -c "print($holder_ticks / $TICKS_PER_SEC * 1e6 / max($done_requests, 1))")"
            printf 'round %d  %4d watchers  Put %9.0f req/s (mean %s) %7.1f us server CPU/req %7.1f us watcher-process CPU/req  events received %s in %s responses (%s puts x %d watchers; out of order %s)\n' \
                "$round" "$watchers" "$rps" "$mean" "$cpu_us" "$holder_us" "${received:-?}" "${responses:-?}" "$done_requests" "$watchers" "${disorder:-0}"
            printf '%s|%s|%s\n' "$watchers" "$rps" "$cpu_us" >>"$RESULTS"
        done
    done
    python3 - "$RESULTS" <<'EOF'
import statistics, sys
runs, cpu = {}, {}
for line in open(sys.argv[1]):
    watchers, rps, cpu_us = line.rstrip("\n").split("|")
    runs.setdefault(int(watchers), []).append(float(rps))
    cpu.setdefault(int(watchers), []).append(float(cpu_us))
base = statistics.median(runs[min(runs)])
print()
print(f"{'watchers':>9}{'median Put req/s':>18}{'vs ' + str(min(runs)):>8}{'CPU us/req':>12}   runs (req/s)")
for watchers, values in sorted(runs.items()):
    median = statistics.median(values)
    print(f"{watchers:>9}{median:>18,.0f}{median / base:>7.2f}x{statistics.median(cpu[watchers]):>12.1f}   "
          + " ".join(f"{v:,.0f}" for v in values))
EOF
    exit 0
fi

echo "tierkv: $SERVER_BIN (pid $TIERKV_PID); $VALUE values; h2load -c $CLIENTS -m $STREAMS -t $THREADS -D $DURATION, $ROUNDS rounds"
RESULTS="$WORK/results.txt"
: >"$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for bench in "${BENCHES[@]}"; do
        IFS='|' read -r name url body pid <<<"$bench"
        ticks_before="$(cpu_ticks "$pid")"
        result="$(h2load_run "$name" "$url" "$body" "$CLIENTS" "$STREAMS" "$DURATION")"
        ticks="$(( $(cpu_ticks "$pid") - ticks_before ))"
        IFS='|' read -r rps done_requests _ <<<"$result"
        cpu_us="$(python3 -c "print($ticks / $TICKS_PER_SEC * 1e6 / max($done_requests, 1))")"
        printf 'round %d  %-24s %12.0f req/s %9.1f us server CPU/req\n' "$round" "$name" "$rps" "$cpu_us"
        printf '%s|%s|%s\n' "$name" "$rps" "$cpu_us" >>"$RESULTS"
    done
done

echo
python3 - "$RESULTS" <<'EOF'
import statistics, sys
runs, cpu = {}, {}
for line in open(sys.argv[1]):
    name, rps, cpu_us = line.rstrip("\n").split("|")
    runs.setdefault(name, []).append(float(rps))
    cpu.setdefault(name, []).append(float(cpu_us))
health = statistics.median(runs["health"])
health_cpu = statistics.median(cpu["health"])
print(f"{'RPC':<26}{'median req/s':>14}{'keys/s':>14}{'vs health':>11}{'CPU us/req':>12}{'CPU vs health':>15}   runs (req/s)")
for name, values in runs.items():
    median = statistics.median(values)
    cpu_median = statistics.median(cpu[name])
    keys = median * (100 if name.startswith("BatchGet") else 1)
    ratio = "" if name == "health" else f"{median / health:.2f}x"
    cpu_ratio = "" if name == "health" or name.startswith("etcd") else f"{health_cpu / cpu_median:.2f}x"
    print(f"{name:<26}{median:>14,.0f}{keys:>14,.0f}{ratio:>11}{cpu_median:>12.1f}{cpu_ratio:>15}   "
          + " ".join(f"{v:,.0f}" for v in values))
print()
print("CPU vs health: the health check's server CPU time per request divided by this RPC's, i.e. the")
print("throughput ratio a server with a core of its own would reach; etcd's CPU is its own process's.")
EOF
