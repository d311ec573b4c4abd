"""benchutil.py - shared helpers for the peer baseline scripts (stdlib only).

Copied unchanged from the shared reference scripts (shared/bench/benchutil.py)
for benches/peers/mtls_proxy_bench.py.

The machine is small (2 vCPUs) and may be shared with other work (compiles,
other benchmarks). Two helpers make that visible instead of silently skewing
figures:

  wait_quiet()  before a measurement, wait (bounded) until the host is nearly
                idle, i.e. nothing else is burning CPU; returns what it saw.
  CpuMeter      around a measurement, account CPU time: host-wide busy time,
                the CPU of our own processes, and the rest ("foreign" load that
                was not ours). Results carry foreign_cpu_pct_of_1core so a
                contaminated run can be spotted and rerun.
"""
import os
import resource
import statistics
import time

CLK = os.sysconf("SC_CLK_TCK")


def host_busy_ticks():
    """(busy, total) jiffies over all CPUs; idle and iowait count as not busy."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    v = v[:8]  # user nice system idle iowait irq softirq steal (guest is inside user)
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def pid_cpu_s(pid):
    """utime+stime of a live process (all its threads), seconds; 0 if gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except (OSError, IndexError, ValueError):
        return 0.0


def self_and_children_cpu_s():
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def wait_quiet(max_busy_pct=10.0, window_s=2.0, max_wait_s=600.0, log=print):
    """Wait until host-wide CPU busy (% of all CPUs) over window_s is below max_busy_pct.
    Call only while our own servers are idle. Bounded by max_wait_s; never raises."""
    t0 = time.monotonic()
    last = None
    warned = False
    while True:
        b0, t_0 = host_busy_ticks()
        time.sleep(window_s)
        b1, t_1 = host_busy_ticks()
        last = 100.0 * (b1 - b0) / max(1, t_1 - t_0)
        waited = time.monotonic() - t0
        if last < max_busy_pct:
            return {"quiet": True, "idle_busy_pct": round(last, 1), "waited_s": round(waited, 1)}
        if waited >= max_wait_s:
            log("  [quiet-gate] host still %.0f%% busy after %.0fs; measuring anyway (flagged)" % (last, waited))
            return {"quiet": False, "idle_busy_pct": round(last, 1), "waited_s": round(waited, 1)}
        if not warned:
            log("  [quiet-gate] host %.0f%% busy with our servers idle (other work on the machine?); waiting..." % last)
            warned = True


class CpuMeter:
    """Accounts CPU over an interval: host busy, ours (self + reaped children + given live pids), foreign."""

    def __init__(self, pids_fn):
        self.pids_fn = pids_fn

    def __enter__(self):
        self.pids = list(self.pids_fn())
        self.h0 = host_busy_ticks()[0]
        self.m0 = self_and_children_cpu_s() + sum(pid_cpu_s(p) for p in self.pids)
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.t1 = time.monotonic()
        self.h1 = host_busy_ticks()[0]
        self.m1 = self_and_children_cpu_s() + sum(pid_cpu_s(p) for p in self.pids)
        return False

    def result(self):
        el = max(1e-9, self.t1 - self.t0)
        host = (self.h1 - self.h0) / CLK
        mine = self.m1 - self.m0
        return {"host_busy_pct_of_1core": round(100 * host / el, 1),
                "ours_cpu_pct_of_1core": round(100 * mine / el, 1),
                "foreign_cpu_pct_of_1core": round(max(0.0, 100 * (host - mine) / el), 1)}


def stats(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def fmt(s, nd=0):
    if not s:
        return "–"
    f = "%%.%df" % nd
    if s["n"] == 1:
        return f % s["median"]
    return (f % s["median"]) + " [" + (f % s["min"]) + "–" + (f % s["max"]) + "]"


def clean_run(measure_once, max_foreign=25.0, max_attempts=4, log=print):
    """Run measure_once() (which should gate, measure and return a dict holding
    foreign_cpu_pct_of_1core) again while other work on the machine used more than
    max_foreign % of one core during it. Bounded by max_attempts; the last result
    is kept and marked clean=False if it never came out clean."""
    r = {}
    for attempt in range(1, max_attempts + 1):
        r = measure_once()
        r["attempts"] = attempt
        if r.get("foreign_cpu_pct_of_1core", 0.0) <= max_foreign:
            r["clean"] = True
            return r
        log("  [foreign-load] %.0f%% of a core was not ours during the test; redoing (attempt %d/%d)" % (
            r["foreign_cpu_pct_of_1core"], attempt, max_attempts))
    r["clean"] = False
    return r


def exit_on_sigterm():
    """Turn SIGTERM into SystemExit so that finally-blocks stop every child by PID."""
    import signal
    import sys
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
