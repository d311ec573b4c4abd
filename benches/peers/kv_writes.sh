#!/bin/bash
# KV writes and reads through a 3-server mesh on loopback, one build against another
# in the same run (alternating rounds, fresh data dirs each time), with the
# leader's fdatasync calls counted by strace when it is installed.
#
#   bash benches/peers/kv_writes.sh --mesh target/release/mesh --baseline /tmp/mesh-old [--rounds 2]
#
# Per round and build: put with 64 clients (8 s), put with 16 clients
# (5 s), sequential put with 1 client to one server (5 s), default-mode
# get with 64 clients after writing every key (8 s); 128 B values,
# 10,000 keys, clients round-robin over the three servers (kvload.py, the
# load generator of the etcd comparison). Prints one JSON line per
# measurement, then the medians and their ratios (mesh / baseline).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
MESH=""; BASE=""; ROUNDS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --mesh) MESH=$2; shift 2 ;;
    --baseline) BASE=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$MESH" ] || { echo "--mesh BINARY is required" >&2; exit 2; }
OUT=$(mktemp -d /tmp/mesh-kvw.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

one_round() { # BIN LABEL
  local bin=$1 label=$2
  local d="$OUT/$label-$3"
  mkdir -p "$d"; PIDS=()
  for i in 0 1 2; do
    local ip=127.0.0.$((50+i)) joins=()
    for j in 0 1 2; do [ $j != $i ] && joins+=(-retry-join "127.0.0.$((50+j)):18300"); done
    "$bin" agent -server -node "c$i" -bind "$ip" -client "$ip" -server-port 18300 -http-port 18500 \
      -dns-port -1 -data-dir "$d/c$i" -bootstrap-expect 3 "${joins[@]}" -log-level warn > "$d/c$i.log" 2>&1 &
    PIDS+=($!)
  done
  local leader=""
  for _ in $(seq 1 200); do
    leader=$(curl -s -m 1 127.0.0.50:18500/v1/status/leader | tr -d '"' | cut -d: -f1 || true)
    [ -n "$leader" ] && break; sleep 0.1
  done
  [ -n "$leader" ] || { echo "no leader for $label" >&2; exit 1; }
  local lpid=${PIDS[$(( ${leader##*.} - 50 ))]}
  local ep=127.0.0.50:18500,127.0.0.51:18500,127.0.0.52:18500
  python3 "$HERE/kvload.py" --api consul --endpoints $ep --mode put --clients 64 --duration 3 --max-ops 3000 > /dev/null
  local tracer=""
  if command -v strace > /dev/null; then
    strace -f -c -e trace=fdatasync -p "$lpid" -o "$d/strace.txt" > /dev/null 2>&1 & tracer=$!
    sleep 0.5
  fi
  for m in "put 64 8 $ep" "put 16 5 $ep" "seqput 1 5 127.0.0.50:18500" "get 64 8 $ep --preload"; do
    set -- $m
    python3 "$HERE/kvload.py" --api consul --endpoints "$4" --mode "$1" --clients "$2" --duration "$3" ${5:-} \
      | python3 -c "import sys,json; d=json.loads(sys.stdin.read()); d['build']='$label'; print(json.dumps(d))"
  done
  if [ -n "$tracer" ]; then
    kill -INT "$tracer" 2>/dev/null || true; sleep 1
    awk -v b="$label" '$NF=="fdatasync" {print "{\"build\": \"" b "\", \"mode\": \"leader_fdatasync\", \"calls\": " $4 "}"}' "$d/strace.txt"
  fi
  cleanup; PIDS=()
}

for r in $(seq 1 "$ROUNDS"); do
  [ -n "$BASE" ] && one_round "$BASE" baseline "$r"
  one_round "$MESH" mesh "$r"
done | tee "$OUT/results.jsonl"
python3 - "$OUT/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def med(build, mode, clients, key):
    v = [r[key] for r in rows if r["build"] == build and r["mode"] == mode and r.get("clients") == clients and r.get(key) is not None]
    return statistics.median(v) if v else None
print("\nmedians (ratio = mesh / baseline)")
for mode, clients in [("put", 64), ("put", 16), ("seqput", 1), ("get", 64)]:
    for key in ["ops_per_s", "lat_us_p50", "lat_us_p99"]:
        m, b = med("mesh", mode, clients, key), med("baseline", mode, clients, key)
        ratio = f"{m / b:.2f}x" if m and b else "-"
        print(f"  {mode:6} {clients:3} {key:11} mesh {m}  baseline {b}  {ratio}")
PY
