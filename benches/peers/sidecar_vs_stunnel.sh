#!/usr/bin/env bash
# The mesh's Connect sidecar pair vs an stunnel mTLS pair vs direct loopback, measured the same way
# in one run (method and load generator: mtls_proxy_bench.py + netbench.c beside this file, copied
# from the shared reference scripts shared/bench/). See benches/README.md, "Sidecar vs stunnel".
#
#   bash benches/peers/sidecar_vs_stunnel.sh [--mesh PATH] [--proxy] [--repeats N] [--out DIR] [-- PY_ARGS...]
#
# Without --mesh it builds `cargo build --release --bins` (CARGO_TARGET_DIR is honoured). The
# sidecars run as `mesh-sidecar` (beside the mesh binary), or with --proxy as `mesh connect proxy`
# (the same code in the full binary, which maps more pages: see BENCHMARKS.md).
# Then, all on 127.0.0.1: a -dev agent (HTTP $HTTP_PORT, RPC $RPC_PORT, no DNS) whose config file
# registers fcs (app 17000 = the bench's echo server, sidecar 21000), fcsiperf (app 17001 = the
# bench's iperf3 server, sidecar 21001) and fcc (sidecar 21002, upstreams fcs -> 20000 and
# fcsiperf -> 20001); intentions fcc -> fcs and fcc -> fcsiperf; the three sidecars
# (`mesh connect proxy -sidecar-for ...`). Once fcc's upstreams carry a byte end to end, runs
# mtls_proxy_bench.py with --configs direct,stunnel-mtls,haproxy-plain-2hop,mesh and --extra
# mesh=20000:20001@<3 PIDs>, then prints the table, the ratios (ratios.py) and the sidecars' peak
# RSS (VmHWM). haproxy-plain-2hop (two haproxy processes, no TLS) is the floor: what two user-space
# proxies cost before any cryptography. Installs stunnel4, haproxy and iperf3 with apt-get if
# missing. Stops everything it started, by PID.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
mesh=""
proxy=0
repeats=2
out=""
HTTP_PORT=${HTTP_PORT:-28500}
RPC_PORT=${RPC_PORT:-28300}
py_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --mesh) mesh="$2"; shift 2 ;;
    --proxy) proxy=1; shift ;;
    --repeats) repeats="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --) shift; py_args=("$@"); break ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
H=127.0.0.1
agent_http="$H:$HTTP_PORT"

need=()
for p in stunnel4 haproxy iperf3 openssl gcc libc6-dev python3 curl; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if [ -z "$mesh" ]; then
  (cd "$root" && cargo build --release --bins)
  mesh="${CARGO_TARGET_DIR:-$root/target}/release/mesh"
fi
mesh="$(cd "$(dirname "$mesh")" && pwd)/$(basename "$mesh")"
[ -x "$mesh" ] || { echo "no mesh binary at $mesh" >&2; exit 1; }
if [ "$proxy" = 1 ]; then
  sidecar=("$mesh" connect proxy)
else
  sidecar=("$(dirname "$mesh")/mesh-sidecar")
  [ -x "${sidecar[0]}" ] || { echo "no mesh-sidecar beside $mesh (build with --bins, or pass --proxy)" >&2; exit 1; }
fi
[ -n "$out" ] || out="${CARGO_TARGET_DIR:-$root/target}/peer-bench/sidecar-vs-stunnel-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

port_busy() { ss -Htln "sport = :$1" | grep -q .; }
for p in "$HTTP_PORT" "$RPC_PORT" 20000 20001 21000 21001 21002; do
  if port_busy "$p"; then echo "port $p is in use; refusing to start" >&2; exit 1; fi
done

work="$(mktemp -d /tmp/sidecar-bench.XXXXXX)"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  # Keep the logs next to the results.
  cp "$work"/*.log "$out"/ 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

gcc -O2 -Wall -pthread -o "$work/netbench" "$here/netbench.c"

cat >"$work/services.json" <<EOF
{"services": [
  {"name": "fcs", "port": 17000,
   "connect": {"sidecar_service": {"port": 21000,
     "proxy": {"local_service_address": "$H", "local_service_port": 17000}}}},
  {"name": "fcsiperf", "port": 17001,
   "connect": {"sidecar_service": {"port": 21001,
     "proxy": {"local_service_address": "$H", "local_service_port": 17001}}}},
  {"name": "fcc",
   "connect": {"sidecar_service": {"port": 21002, "proxy": {"upstreams": [
     {"destination_name": "fcs", "local_bind_address": "$H", "local_bind_port": 20000},
     {"destination_name": "fcsiperf", "local_bind_address": "$H", "local_bind_port": 20001}]}}}}
]}
EOF

get() { curl -fsS --max-time 3 "http://$agent_http$1"; }
wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local secs="$1" what="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out after ${secs}s waiting for $what" >&2; return 1; fi
    sleep 0.5
  done
}

echo "== mesh: $mesh ($("$mesh" version 2>/dev/null | head -1 || true))"
"$mesh" agent -dev -node bench1 -bind "$H" -client "$H" -http-port="$HTTP_PORT" -server-port="$RPC_PORT" \
  -dns-port=-1 -config-file "$work/services.json" >"$work/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
has_leader() { get /v1/status/leader | grep -q ':'; }
wait_for 30 "the agent's leader" has_leader
has_sidecars() { local s; s="$(get /v1/agent/services)"; for n in fcs fcsiperf fcc; do
  grep -q "\"$n-sidecar-proxy\"" <<<"$s" || return 1; done; }
wait_for 20 "the three sidecar registrations" has_sidecars

for dst in fcs fcsiperf; do
  wait_for 20 "intention fcc -> $dst" "$mesh" intention create -allow -replace -http-addr "$agent_http" fcc "$dst"
done

sidecar_pids=()
for s in fcs fcsiperf fcc; do
  "${sidecar[@]}" -sidecar-for "$s" -http-addr "$agent_http" >"$work/sidecar-$s.log" 2>&1 &
  pids+=("$!")
  sidecar_pids+=("$!")
done
listening() { local p; for p in 20000 20001 21000 21001 21002; do port_busy "$p" || return 1; done; }
wait_for 30 "the sidecars' listeners" listening
# The sidecars' "Connect Sidecar Listening" TCP checks run every 10 s.
passing() { local s; for s in fcs fcsiperf; do get "/v1/health/connect/$s?passing" | grep -q ServiceID || return 1; done; }
wait_for 40 "passing fcs and fcsiperf sidecars in /v1/health/connect" passing
for i in 0 1 2; do
  kill -0 "${sidecar_pids[$i]}" 2>/dev/null || { echo "a sidecar exited; see its log:" >&2; cat "$work"/sidecar-*.log >&2; exit 1; }
done

# One byte end to end through each upstream, with a throw-away echo on the app ports (closed again
# before the benchmark starts its own echo and iperf3 servers there).
python3 - "$H" <<'EOF'
import socket, sys, threading, time
host = sys.argv[1]
for app, upstream in ((17000, 20000), (17001, 20001)):
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, app)); ls.listen(16); ls.settimeout(0.5)
    stop = False
    def serve():
        while not stop:
            try:
                c, _ = ls.accept()
            except OSError:
                continue
            with c:
                c.settimeout(3)
                try:
                    c.sendall(c.recv(64))
                except OSError:
                    pass
    t = threading.Thread(target=serve); t.start()
    deadline, ok = time.monotonic() + 30, False
    while not ok and time.monotonic() < deadline:
        try:
            with socket.create_connection((host, upstream), 3) as s:
                s.settimeout(3); s.sendall(b"probe"); ok = s.recv(64) == b"probe"
        except OSError:
            pass
        if not ok:
            time.sleep(0.5)
    stop = True; t.join(); ls.close()
    if not ok:
        sys.exit("nothing came back through 127.0.0.1:%d -> sidecars -> %d" % (upstream, app))
    print("== end to end: %d -> fcc sidecar -> mTLS -> sidecar -> %d works" % (upstream, app))
EOF

{
  echo "== machine: $(nproc) vCPU, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), kernel $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "== mesh sidecars (${sidecar[*]}) PIDs (fcs fcsiperf fcc): ${sidecar_pids[*]}; agent PID $agent_pid"
} | tee "$out/machine.txt"

pid_list="$(IFS=,; echo "${sidecar_pids[*]}")"
python3 "$here/mtls_proxy_bench.py" --netbench "$work/netbench" --repeats "$repeats" \
  --configs direct,stunnel-mtls,haproxy-plain-2hop,mesh --extra "mesh=20000:20001@$pid_list" \
  --quiet-max-wait 120 --out "$out" ${py_args[@]+"${py_args[@]}"}

echo
echo "== ratios (mesh sidecar pair vs stunnel pair, plain haproxy pair and direct; medians over repeats)"
python3 "$here/ratios.py" "$out/mtls_raw.jsonl" --subject mesh --versus stunnel-mtls,haproxy-plain-2hop,direct | tee "$out/ratios.md"

echo
echo "== peak RSS (VmHWM) at the end"
{
  i=0
  for s in fcs fcsiperf fcc; do
    echo "sidecar $s (PID ${sidecar_pids[$i]}): $(grep VmHWM "/proc/${sidecar_pids[$i]}/status" | awk '{print $2, $3}')"
    i=$((i + 1))
  done
  echo "agent -dev (PID $agent_pid): $(grep VmHWM "/proc/$agent_pid/status" | awk '{print $2, $3}')"
} | tee "$out/rss.txt"
echo
echo "results in $out"
