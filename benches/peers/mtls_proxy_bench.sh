#!/usr/bin/env bash
# Peer baseline: mutual-TLS sidecar pair (stunnel4, haproxy 2.6) vs plain 2-hop proxy vs direct loopback.
# Copied from the shared reference scripts (shared/bench/mtls_proxy_bench.sh); the project's own
# comparison with its sidecar is sidecar_vs_stunnel.sh beside this file (see benches/README.md).
# Usage: bash mtls_proxy_bench.sh [--repeats 3] [--configs direct,stunnel-mtls,...] [--out DIR]
#        [--extra NAME=ECHO_PORT[:IPERF_PORT]@PID[,PID..]]
# Installs what it needs, builds netbench.c into a temp dir, runs mtls_proxy_bench.py
# (which starts/stops every process by PID, all on 127.0.0.1, certs in a temp dir).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
need=()
for p in stunnel4 haproxy iperf3 openssl gcc libc6-dev python3; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
build="$(mktemp -d /tmp/netbench-build.XXXXXX)"
trap 'rm -rf "$build"' EXIT
gcc -O2 -Wall -pthread -o "$build/netbench" "$here/netbench.c"
python3 "$here/mtls_proxy_bench.py" --netbench "$build/netbench" "$@"
