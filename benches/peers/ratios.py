#!/usr/bin/env python3
"""ratios.py - ratios of one configuration against others from mtls_proxy_bench.py's raw output.

  python3 ratios.py RESULTS_DIR/mtls_raw.jsonl [--subject mesh] [--versus stunnel-mtls,haproxy-plain-2hop,direct]

For each measure, the median over repeats of each configuration and
subject/baseline. Latencies and µs per connection: lower is better, so a
ratio above 1 means the subject is slower. Connections/s and Gbit/s: higher
is better, so a ratio below 1 means the subject is slower. Then the round trip
each pair adds over a direct connection (p50 minus direct's p50), which is
what the sidecar's latency target is set on. Prints Markdown.
"""
import argparse
import json
import statistics

MEASURES = [
    # (test, key, label, better)
    ("pingpong64", "rtt_us_p50", "64 B round trip p50 µs", "lower"),
    ("pingpong64", "rtt_us_p99", "64 B round trip p99 µs", "lower"),
    ("pingpong64-1vcpu", "rtt_us_p50", "64 B round trip p50 µs, all on 1 vCPU", "lower"),
    ("pingpong64-1vcpu", "rtt_us_p99", "64 B round trip p99 µs, all on 1 vCPU", "lower"),
    ("connrate-t1", "conns_per_s", "new connections/s, 1 thread", "higher"),
    ("connrate-t1", "conn_us_p50", "connect + exchange p50 µs, 1 thread", "lower"),
    ("connrate-t8", "conns_per_s", "new connections/s, 8 threads", "higher"),
    ("iperf-P1", "gbit_per_s", "iperf3 one stream Gbit/s", "higher"),
    ("iperf-P1", "proxy_cpu_pct_of_1core", "proxy CPU % of 1 core during iperf3", "lower"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw")
    ap.add_argument("--subject", default="mesh")
    ap.add_argument("--versus", default="stunnel-mtls,direct")
    a = ap.parse_args()
    versus = [v for v in a.versus.split(",") if v]
    vals = {}
    unclean = 0
    for ln in open(a.raw):
        r = json.loads(ln)
        if "config" not in r:
            continue
        if r.get("clean") is False or r.get("gate_quiet") is False:
            unclean += 1
        for test, key, _, _ in MEASURES:
            if r.get("test") == test and r.get(key) is not None:
                vals.setdefault((r["config"], test, key), []).append(r[key])
    med = {k: statistics.median(v) for k, v in vals.items()}
    cfgs = versus + [a.subject]
    print("| measure | better | " + " | ".join(cfgs) + " | " +
          " | ".join("%s / %s" % (a.subject, v) for v in versus) + " |")
    print("|---|---|" + "---|" * (len(cfgs) + len(versus)))
    for test, key, label, better in MEASURES:
        cells = []
        for c in cfgs:
            m = med.get((c, test, key))
            cells.append("–" if m is None else ("%.2f" % m if m < 100 else "%.0f" % m))
        ratios = []
        s = med.get((a.subject, test, key))
        for v in versus:
            b = med.get((v, test, key))
            ratios.append("–" if s is None or not b else "%.2f" % (s / b))
        print("| %s | %s | %s | %s |" % (label, better, " | ".join(cells), " | ".join(ratios)))
    overheads(med, a.subject, versus)
    n = {c: len(vals.get((c, "pingpong64", "rtt_us_p50"), [])) for c in cfgs}
    print()
    print("medians over repeats %s; tests not clean (foreign load or no quiet host): %d" % (n, unclean))


def overheads(med, subject, versus):
    """The round trip each pair adds to a direct connection (its p50 minus
    direct's, medians over repeats): the sidecar targets are set on this."""
    others = [v for v in versus if v != "direct"]
    tests = [(test, label) for test, label in (("pingpong64", "both vCPUs"), ("pingpong64-1vcpu", "all on 1 vCPU"))
             if ("direct", test, "rtt_us_p50") in med]
    if not others or not tests:
        return
    print()
    print("| round-trip overhead over direct, p50 µs | " + " | ".join(others) + " | " + subject + " | " +
          " | ".join("%s / %s" % (subject, v) for v in others) + " |")
    print("|---|" + "---|" * (2 * len(others) + 1))
    for test, label in tests:
        direct = med[("direct", test, "rtt_us_p50")]
        over = {c: med[(c, test, "rtt_us_p50")] - direct
                for c in others + [subject] if (c, test, "rtt_us_p50") in med}
        cells = ["%.1f" % over[c] if c in over else "–" for c in others + [subject]]
        ratios = ["%.2f" % (over[subject] / over[v]) if subject in over and over.get(v, 0) > 0 else "–"
                  for v in others]
        print("| %s | %s | %s |" % (label, " | ".join(cells), " | ".join(ratios)))


if __name__ == "__main__":
    main()
