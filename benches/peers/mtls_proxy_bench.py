#!/usr/bin/env python3
"""mtls_proxy_bench.py - peer baseline: a sidecar pair carrying TCP over mutual TLS.

Copied from the shared reference scripts (shared/bench/mtls_proxy_bench.py,
with benchutil.py and netbench.c beside it) so that the project's own runner
(benches/peers/sidecar_vs_stunnel.sh) lives in the project. Changes from the
reference: only the peers named in --configs are started (stunnel alone does
not need haproxy installed), and each process's peak RSS (VmHWM) is read just
before it is stopped and printed with the summary. The method (tests, load
generator, quiet gate, foreign-load retries, table) is unchanged.

  client -> proxy A (plain in, mTLS out) -> proxy B (mTLS in, plain out) -> server

Peers: stunnel4 (Debian) and haproxy 2.6 (Debian), each as two separate
processes (A and B); plus a plain 2-hop haproxy chain (no TLS) and a direct
loopback connection as references. Certificates: a throw-away ECDSA P-256 CA
and two leaf certs made with openssl in a temp dir; B requires and verifies
A's client cert, A verifies B's chain and host name.

Tests per configuration and repeat (configurations interleaved, order rotated):
  pingpong   64-byte request/response round trips on one connection (netbench)
  pingpong-1vcpu  the same with client, proxies and server all pinned to vCPU 0
             (removes cross-vCPU wake-up cost, which is large on this VM)
  connrate   new connections/s, each doing one 64-byte exchange (netbench),
             1 and 8 client threads
  iperf3     bulk TCP throughput, one stream, -t 10 (first second omitted)

Everything listens on 127.0.0.1 only; every process started here is stopped by
its PID. Needs: netbench binary (see mtls_proxy_bench.sh), stunnel4, haproxy,
iperf3, openssl.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchutil  # noqa: E402

HOST = "127.0.0.1"
ECHO_PORT, IPERF_PORT = 17000, 17001
PORTS = {
    # name: (echo port, iperf port or None, processes whose CPU is attributed)
    "direct": (ECHO_PORT, IPERF_PORT, []),
    "haproxy-plain-2hop": (17310, 17311, ["haproxy-A", "haproxy-B"]),
    "stunnel-mtls": (17110, 17111, ["stunnel-A", "stunnel-B"]),
    "haproxy-mtls": (17210, 17211, ["haproxy-A", "haproxy-B"]),
    # same chains with TLS session resumption disabled on the A side (full handshake per connection)
    "stunnel-mtls-noresume": (17112, None, ["stunnel-A", "stunnel-B"]),
    "haproxy-mtls-noreuse": (17212, None, ["haproxy-A", "haproxy-B"]),
}
STUNNEL_LISTEN = [17110, 17111, 17112, 17120, 17121]
HAPROXY_LISTEN = [17210, 17211, 17212, 17220, 17221, 17310, 17311, 17320, 17321]

PROCS = {}  # name -> Popen


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_port(port, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d did not open" % port)


def start(name, cmd, logdir):
    log = open(os.path.join(logdir, name + ".log"), "ab")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    PROCS[name] = p
    return p


def stop_all():
    for name, p in list(PROCS.items()):
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)
        PROCS.pop(name, None)


EXTERNAL = {}  # "ext:NAME" -> PIDs of sidecar processes started by someone else (see --extra)


def pids_of(names):
    out = []
    for n in names:
        if n in EXTERNAL:
            out += EXTERNAL[n]
        elif n in PROCS:
            out.append(PROCS[n].pid)
    return out


def set_affinity(names, cpus):
    """Pin every thread of the named processes (new threads inherit from their creator)."""
    for pid in pids_of(names):
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass


def proc_cpu_s(names):
    return sum(benchutil.pid_cpu_s(pid) for pid in pids_of(names))  # utime + stime, all threads


def peak_rss_kib(pid):
    """VmHWM (peak resident set) of a live process in KiB; None if gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for ln in f:
                if ln.startswith("VmHWM:"):
                    return int(ln.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def make_certs(d):
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(["openssl", "req", "-x509", "-new", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3",
         "-subj", "/CN=bench-mesh-ca", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"], cwd=d)
    for n in ("a", "b"):
        with open(os.path.join(d, n + ".ext"), "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n"
                    "subjectAltName=DNS:%s.sidecar.local,URI:spiffe://bench.local/ns/default/svc/%s\n" % (n, n))
        run(["openssl", "req", "-new", *ec, "-keyout", n + ".key", "-out", n + ".csr",
             "-subj", "/CN=%s.sidecar.local" % n], cwd=d)
        run(["openssl", "x509", "-req", "-in", n + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "3", "-out", n + ".crt", "-extfile", n + ".ext"], cwd=d)
        with open(os.path.join(d, n + ".pem"), "w") as f:  # haproxy wants cert+key in one file
            f.write(open(os.path.join(d, n + ".crt")).read() + open(os.path.join(d, n + ".key")).read())


def write_configs(d):
    j = lambda n: os.path.join(d, n)
    with open(j("stunnel-A.conf"), "w") as f:
        f.write(f"""foreground = yes
pid =
debug = warning
[echo]
client = yes
accept = {HOST}:17110
connect = {HOST}:17120
cert = {j('a.crt')}
key = {j('a.key')}
CAfile = {j('ca.crt')}
verifyChain = yes
checkHost = b.sidecar.local
[iperf]
client = yes
accept = {HOST}:17111
connect = {HOST}:17121
cert = {j('a.crt')}
key = {j('a.key')}
CAfile = {j('ca.crt')}
verifyChain = yes
checkHost = b.sidecar.local
[echo-noresume]
client = yes
accept = {HOST}:17112
connect = {HOST}:17120
cert = {j('a.crt')}
key = {j('a.key')}
CAfile = {j('ca.crt')}
verifyChain = yes
checkHost = b.sidecar.local
sessionResume = no
""")
    with open(j("stunnel-B.conf"), "w") as f:
        f.write(f"""foreground = yes
pid =
debug = warning
[echo]
accept = {HOST}:17120
connect = {HOST}:{ECHO_PORT}
cert = {j('b.crt')}
key = {j('b.key')}
CAfile = {j('ca.crt')}
verifyChain = yes
requireCert = yes
[iperf]
accept = {HOST}:17121
connect = {HOST}:{IPERF_PORT}
cert = {j('b.crt')}
key = {j('b.key')}
CAfile = {j('ca.crt')}
verifyChain = yes
requireCert = yes
""")
    common = """global
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
"""
    srv_tls = f"ssl crt {j('a.pem')} ca-file {j('ca.crt')} verify required verifyhost b.sidecar.local"
    with open(j("haproxy-A.cfg"), "w") as f:
        f.write(common + f"""
listen mtls_echo
    bind {HOST}:17210
    server b {HOST}:17220 {srv_tls}
listen mtls_iperf
    bind {HOST}:17211
    server b {HOST}:17221 {srv_tls}
listen mtls_echo_noreuse
    bind {HOST}:17212
    server b {HOST}:17220 {srv_tls} no-ssl-reuse
listen plain_echo
    bind {HOST}:17310
    server b {HOST}:17320
listen plain_iperf
    bind {HOST}:17311
    server b {HOST}:17321
""")
    bind_tls = f"ssl crt {j('b.pem')} ca-file {j('ca.crt')} verify required"
    with open(j("haproxy-B.cfg"), "w") as f:
        f.write(common + f"""
listen mtls_echo
    bind {HOST}:17220 {bind_tls}
    server s {HOST}:{ECHO_PORT}
listen mtls_iperf
    bind {HOST}:17221 {bind_tls}
    server s {HOST}:{IPERF_PORT}
listen plain_echo
    bind {HOST}:17320
    server s {HOST}:{ECHO_PORT}
listen plain_iperf
    bind {HOST}:17321
    server s {HOST}:{IPERF_PORT}
""")


def tls_probe(d, port, with_cert):
    """Connect straight to proxy B's mTLS port, send 'ping', expect it echoed by the backend."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(os.path.join(d, "ca.crt"))
    if with_cert:
        ctx.load_cert_chain(os.path.join(d, "a.crt"), os.path.join(d, "a.key"))
    try:
        with socket.create_connection((HOST, port), 3) as raw:
            with ctx.wrap_socket(raw, server_hostname="b.sidecar.local") as s:
                s.sendall(b"ping")
                got = s.recv(16)
                return {"echoed": got == b"ping", "version": s.version(), "cipher": s.cipher()[0]}
    except (OSError, ssl.SSLError) as e:
        return {"echoed": False, "error": type(e).__name__ + ": " + str(e)[:80]}


def netbench(nb, *args, timeout=120, cpus=None):
    pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    out = subprocess.run([nb, *map(str, args)], capture_output=True, text=True, timeout=timeout, preexec_fn=pre)
    if out.returncode != 0:
        raise RuntimeError("netbench %s failed: %s" % (args, out.stderr[-500:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def iperf(port, secs, parallel):
    out = subprocess.run(["iperf3", "-c", HOST, "-p", str(port), "-t", str(secs), "-O", "1", "-P", str(parallel),
                          "-J"], capture_output=True, text=True, timeout=secs + 60)
    j = json.loads(out.stdout)
    if "error" in j:
        raise RuntimeError("iperf3: " + j["error"])
    e = j["end"]
    return {"gbit_per_s": round(e["sum_received"]["bits_per_second"] / 1e9, 3),
            "iperf_client_cpu_pct": round(e["cpu_utilization_percent"]["host_total"], 1),
            "iperf_server_cpu_pct": round(e["cpu_utilization_percent"]["remote_total"], 1),
            "streams": parallel, "seconds": secs}


stats, fmt = benchutil.stats, benchutil.fmt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--netbench", required=True, help="path to compiled netbench")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pp-iters", type=int, default=20000)
    ap.add_argument("--pp-max-s", type=float, default=15)
    ap.add_argument("--cr-secs", type=float, default=5)
    ap.add_argument("--cr-max", type=int, default=200000)
    ap.add_argument("--cr-threads", default="1,8")
    ap.add_argument("--iperf-secs", type=int, default=10)
    ap.add_argument("--iperf-parallel", default="1")
    ap.add_argument("--configs", default=None, help="comma list; default: all built-in plus --extra ones")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=ECHO_PORT[:IPERF_PORT]@PID[,PID..]",
                    help="also measure an externally started sidecar pair (e.g. the project's): its A-side listens "
                         "on 127.0.0.1:ECHO_PORT (and IPERF_PORT) and its B side forwards to this script's echo "
                         "server 127.0.0.1:%d (and iperf3 server 127.0.0.1:%d); PIDs = the sidecar processes, "
                         "for CPU accounting and pinning. Repeatable." % (ECHO_PORT, IPERF_PORT))
    ap.add_argument("--out", default=None)
    ap.add_argument("--quiet-max-busy", type=float, default=10.0,
                    help="before each config block wait until host CPU busy %% (all CPUs) is below this")
    ap.add_argument("--quiet-max-wait", type=float, default=600.0, help="max seconds to wait for quiet")
    ap.add_argument("--no-quiet-gate", action="store_true")
    ap.add_argument("--max-foreign", type=float, default=25.0,
                    help="redo a test if other work used more than this %% of one core during it")
    ap.add_argument("--max-attempts", type=int, default=4)
    a = ap.parse_args()
    benchutil.exit_on_sigterm()

    out = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                "mtls-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    raw = open(os.path.join(out, "mtls_raw.jsonl"), "a")
    d = tempfile.mkdtemp(prefix="mtlsbench-")
    for spec in a.extra:
        name, _, rest = spec.partition("=")
        ports, _, pids = rest.partition("@")
        ep, _, ip = ports.partition(":")
        if not name or not ep or not pids:
            sys.exit("bad --extra %r; want NAME=ECHO_PORT[:IPERF_PORT]@PID[,PID..]" % spec)
        EXTERNAL["ext:" + name] = [int(x) for x in pids.split(",") if x]
        PORTS[name] = (int(ep), int(ip) if ip else None, ["ext:" + name])
    configs = [c for c in (a.configs or ",".join(PORTS)).split(",") if c]
    unknown = [c for c in configs if c not in PORTS]
    if unknown:
        shutil.rmtree(d, ignore_errors=True)
        sys.exit("unknown config(s) %s; known: %s" % (unknown, ",".join(PORTS)))
    use_stunnel = any(c.startswith("stunnel") for c in configs)
    use_haproxy = any(c.startswith("haproxy") for c in configs)
    listen = [ECHO_PORT, IPERF_PORT] + (STUNNEL_LISTEN if use_stunnel else []) + \
        (HAPROXY_LISTEN if use_haproxy else [])
    for p in listen:
        if not port_free(p):
            shutil.rmtree(d, ignore_errors=True)
            sys.exit("port %d on %s in use; refusing to start" % (p, HOST))
    crt = [int(x) for x in a.cr_threads.split(",") if x]
    ipp = [int(x) for x in a.iperf_parallel.split(",") if x]
    versions = {
        "stunnel": next((ln.strip() for ln in subprocess.run(["stunnel4", "-version"], capture_output=True,
                                                              text=True).stderr.splitlines()
                         if ln.startswith("stunnel ")), "?") if use_stunnel else "not used",
        "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[0].strip()
        if use_haproxy else "not used",
        "iperf3": subprocess.run(["iperf3", "--version"], capture_output=True, text=True).stdout.split("\n")[0].strip(),
        "openssl": subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip(),
        "kernel": os.uname().release,
    }
    rows = {}
    peak_rss = {}  # process name -> VmHWM KiB, read just before stopping
    try:
        make_certs(d)
        write_configs(d)
        start("echo", [a.netbench, "server", HOST, str(ECHO_PORT)], d)
        start("iperf3-server", ["iperf3", "-s", "-B", HOST, "-p", str(IPERF_PORT)], d)
        if use_stunnel:
            start("stunnel-B", ["stunnel4", os.path.join(d, "stunnel-B.conf")], d)
            start("stunnel-A", ["stunnel4", os.path.join(d, "stunnel-A.conf")], d)
        if use_haproxy:
            start("haproxy-B", ["haproxy", "-db", "-f", os.path.join(d, "haproxy-B.cfg")], d)
            start("haproxy-A", ["haproxy", "-db", "-f", os.path.join(d, "haproxy-A.cfg")], d)
        for p in listen:
            wait_port(p)
        time.sleep(0.5)
        for n, p in PROCS.items():
            if p.poll() is not None:
                raise RuntimeError("%s exited early; see %s/%s.log" % (n, d, n))
        sanity = {}
        for name, port in (("stunnel-B", 17120), ("haproxy-B", 17220)):
            if name not in PROCS:
                continue
            sanity[name + " with client cert"] = tls_probe(d, port, True)
            sanity[name + " without client cert"] = tls_probe(d, port, False)
        for k, v in sanity.items():
            print("sanity:", k, v, flush=True)
        ok = all(v["echoed"] for k, v in sanity.items() if "with client" in k) and \
            not any(v["echoed"] for k, v in sanity.items() if "without" in k)
        if not ok:
            raise RuntimeError("mTLS sanity check failed: %s" % sanity)
        print(json.dumps({"meta": {"versions": versions, "sanity": sanity, "args": vars(a)}}), file=raw, flush=True)

        def record(cfg, test, r, rep):
            r = dict(r, config=cfg, test=test, repeat=rep)
            rows.setdefault((cfg, test), []).append(r)
            print(json.dumps(r), file=raw, flush=True)
            print("  %-22s %-12s %s" % (cfg, test, {k: r[k] for k in r if k in (
                "rtt_us_p50", "rtt_us_p99", "conns_per_s", "conn_us_p50", "conn_us_p99", "errors", "gbit_per_s",
                "proxy_cpu_pct_of_1core", "foreign_cpu_pct_of_1core", "attempts", "clean")}), flush=True)

        def measured(cfg, fn):
            return benchutil.clean_run(lambda: measured_once(cfg, fn), a.max_foreign, a.max_attempts)

        def measured_once(cfg, fn):
            gate_state = {"quiet": None} if a.no_quiet_gate else \
                benchutil.wait_quiet(a.quiet_max_busy, 2.0, a.quiet_max_wait)
            names = PORTS[cfg][2]
            c0 = proc_cpu_s(names)
            with benchutil.CpuMeter(lambda: [p.pid for p in PROCS.values()] + pids_of(EXTERNAL)) as m:
                r = fn()
            c1 = proc_cpu_s(names)
            r.update(m.result())
            r["proxy_cpu_pct_of_1core"] = round(100 * (c1 - c0) / (m.t1 - m.t0), 1) if names else 0.0
            r["gate_quiet"] = gate_state.get("quiet")
            r["gate_idle_busy_pct"] = gate_state.get("idle_busy_pct")
            return r

        all_cpus = os.sched_getaffinity(0)

        for rep in range(1, a.repeats + 1):
            order = configs[rep - 1:] + configs[:rep - 1]
            print("repeat %d, order %s" % (rep, order), flush=True)
            for cfg in order:
                eport, iport, _ = PORTS[cfg]
                record(cfg, "pingpong64", measured(cfg, lambda: netbench(
                    a.netbench, "pingpong", HOST, eport, 64, a.pp_iters, a.pp_max_s, 1000)), rep)
                pinned = ["echo"] + PORTS[cfg][2]
                set_affinity(pinned, {0})
                try:
                    record(cfg, "pingpong64-1vcpu", measured(cfg, lambda: netbench(
                        a.netbench, "pingpong", HOST, eport, 64, a.pp_iters, a.pp_max_s, 1000, cpus={0})), rep)
                finally:
                    set_affinity(pinned, all_cpus)
                for t in crt:
                    record(cfg, "connrate-t%d" % t, measured(cfg, lambda: netbench(
                        a.netbench, "connrate", HOST, eport, 64, t, a.cr_secs, a.cr_max)), rep)
                    time.sleep(1.0)  # let TIME_WAIT / teardown settle a little
                if iport:
                    for par in ipp:
                        record(cfg, "iperf-P%d" % par, measured(cfg, lambda: iperf(iport, a.iperf_secs, par)), rep)
    finally:
        for n, p in PROCS.items():
            peak_rss[n] = peak_rss_kib(p.pid)
        for n, pids in EXTERNAL.items():
            for pid in pids:
                peak_rss["%s pid %d" % (n, pid)] = peak_rss_kib(pid)
        stop_all()
        if not raw.closed:
            print(json.dumps({"peak_rss_kib": peak_rss}), file=raw, flush=True)
        raw.close()
        shutil.rmtree(d, ignore_errors=True)

    lines = ["# mTLS sidecar-pair peer baseline (%s)" % time.strftime("%Y-%m-%d %H:%M:%S"), "",
             "versions: " + "; ".join("%s=%s" % kv for kv in versions.items()) + "  ",
             "certs: ECDSA P-256 CA + leafs; B requires+verifies client cert, A verifies chain+host. "
             "All on 127.0.0.1, 2 vCPUs shared by client, proxies and server. median [min–max] over %d repeats." % (
                 a.repeats), "",
             "| config | ping-pong 64B RTT p50 µs | RTT p99 µs | RTT p50 µs, all on 1 vCPU | RTT p99 µs, 1 vCPU | "
             "conn/s (1 thr) | conn p50 µs (1 thr) | conn p99 µs (1 thr) | conn/s (8 thr) | "
             "iperf3 Gbit/s (1 stream) | proxy CPU % of 1 core during iperf |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cfg in configs:
        g = lambda test, key: stats([r.get(key) for r in rows.get((cfg, test), [])])
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            cfg, fmt(g("pingpong64", "rtt_us_p50"), 1), fmt(g("pingpong64", "rtt_us_p99"), 1),
            fmt(g("pingpong64-1vcpu", "rtt_us_p50"), 1), fmt(g("pingpong64-1vcpu", "rtt_us_p99"), 1),
            fmt(g("connrate-t1", "conns_per_s")), fmt(g("connrate-t1", "conn_us_p50")),
            fmt(g("connrate-t1", "conn_us_p99")), fmt(g("connrate-t8", "conns_per_s")),
            fmt(g("iperf-P1", "gbit_per_s"), 2), fmt(g("iperf-P1", "proxy_cpu_pct_of_1core"))))
    errs = {"%s/%s" % k: sum(r.get("errors", 0) for r in v) for k, v in rows.items() if any(r.get("errors") for r in v)}
    lines += ["", "connection errors: %s" % (errs or "none")]
    fr = [r for v in rows.values() for r in v]
    lines.append("foreign CPU (not ours) during tests, %% of 1 core: median %.1f, max %.1f; tests run without a quiet "
                 "host or with foreign load after retries: %d of %d" % (statistics.median([r["foreign_cpu_pct_of_1core"] for r in fr]),
                                      max(r["foreign_cpu_pct_of_1core"] for r in fr),
                                      sum(1 for r in fr if r.get("gate_quiet") is False or
                                          r.get("clean") is False), len(fr)))
    lines.append("peak RSS (VmHWM) at the end, MiB: " + ", ".join(
        "%s %.1f" % (n, v / 1024) for n, v in peak_rss.items() if v is not None))
    extra = sorted({k[1] for k in rows} - {"pingpong64", "pingpong64-1vcpu", "connrate-t1", "connrate-t8",
                                           "iperf-P1"})
    for test in extra:
        for cfg in configs:
            rs = rows.get((cfg, test))
            if rs:
                key = "gbit_per_s" if test.startswith("iperf") else "conns_per_s"
                lines.append("%s %s %s: %s" % (cfg, test, key, fmt(stats([r[key] for r in rs]), 2)))
    summary = "\n".join(lines) + "\n"
    with open(os.path.join(out, "mtls_summary.md"), "w") as f:
        f.write(summary)
    print(summary)


if __name__ == "__main__":
    main()
