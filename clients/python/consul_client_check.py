#!/usr/bin/env python3
"""Drives a mesh cluster with an unmodified Consul client library (py-consul).

Usage: consul_client_check.py AGENT_HOST:PORT [OTHER_AGENT_HOST:PORT]

Registers a service with a TTL check through the first agent's API, reads it
back through the catalog and health endpoints (from the second agent when
given, so the answer crossed the cluster), blocks on an index until a check
change wakes it, registers and removes an external node through the catalog,
filters, and uses KV. Every wait is bounded; any mismatch exits non-zero with
a message naming the step. Prints one line per step.
"""
import sys
import threading
import time

import consul
from consul import Check


def fail(step, msg):
    print(f"FAIL {step}: {msg}", flush=True)
    sys.exit(1)


def client(addr):
    host, port = addr.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port))


def wait_for(step, fn, timeout=15.0):
    """Polls fn until it returns a truthy value; fails the step on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except consul.ConsulException as e:  # e.g. no leader during a failover
            last = e
        time.sleep(0.1)
    fail(step, f"not true within {timeout}s (last: {last!r})")


def main():
    a = client(sys.argv[1])
    b = client(sys.argv[2]) if len(sys.argv) > 2 else a

    leader = wait_for("status.leader", lambda: a.status.leader())
    print(f"ok status.leader {leader}", flush=True)

    node_name = a.agent.self()["Config"]["NodeName"]

    # Register a service with a TTL check on agent a.
    assert a.agent.service.register(
        "pyweb",
        service_id="pyweb1",
        port=8080,
        tags=["v1", "blue"],
        meta={"Some_Key": "kept"},
        check=Check.ttl("30s"),
    )
    services = a.agent.services()
    if "pyweb1" not in services or services["pyweb1"]["Port"] != 8080:
        fail("agent.services", services)
    checks = a.agent.checks()
    ttl_ids = [cid for cid, c in checks.items() if c.get("ServiceID") == "pyweb1"]
    if len(ttl_ids) != 1:
        fail("agent.checks", checks)
    ttl_id = ttl_ids[0]
    print(f"ok agent.service.register (check {ttl_id})", flush=True)

    # The catalog (read through agent b) shows it once anti-entropy ran.
    def in_catalog():
        _, nodes = b.catalog.service("pyweb")
        return nodes
    nodes = wait_for("catalog.service", in_catalog)
    row = nodes[0]
    if row["ServiceID"] != "pyweb1" or row["ServicePort"] != 8080 or row["Node"] != node_name:
        fail("catalog.service", row)
    if row["ServiceMeta"].get("Some_Key") != "kept" or "blue" not in row["ServiceTags"]:
        fail("catalog.service meta/tags", row)
    _, by_tag = b.catalog.service("pyweb", tag="blue")
    _, by_other_tag = b.catalog.service("pyweb", tag="green")
    if len(by_tag) != 1 or by_other_tag:
        fail("catalog.service ?tag", (by_tag, by_other_tag))
    _, services = b.catalog.services()
    if "pyweb" not in services or sorted(services["pyweb"]) != ["blue", "v1"]:
        fail("catalog.services", services)
    print("ok catalog.service / catalog.services", flush=True)

    # A new TTL check is critical; passing it shows up in ?passing.
    _, passing = b.health.service("pyweb", passing=True)
    if passing:
        fail("health.service passing before ttl_pass", passing)
    a.agent.check.ttl_pass(ttl_id, "all good")
    wait_for("health.service ?passing", lambda: b.health.service("pyweb", passing=True)[1])
    print("ok agent.check.ttl_pass -> health.service?passing", flush=True)

    # A blocking query wakes when the check fails. Consul's index is shared
    # by the whole catalog here, so (as Consul's docs tell clients) a wake
    # may come from another change: block again on the new index until the
    # check's status changed, as a watch does.
    index, entries = b.health.service("pyweb")
    if not entries or entries[0]["Service"]["ID"] != "pyweb1":
        fail("health.service", entries)
    result = {"wakes": 0}

    def block():
        t0 = time.monotonic()
        idx = index
        while time.monotonic() - t0 < 15:
            new_idx, got = b.health.service("pyweb", index=idx, wait="20s")
            result["wakes"] += 1
            if int(new_idx) < int(idx):
                result["backwards"] = (idx, new_idx)
                return
            idx = new_idx
            statuses = [c["Status"] for c in got[0]["Checks"] if c["CheckID"] == ttl_id]
            if statuses == ["critical"]:
                result["index"] = new_idx
                result["took"] = time.monotonic() - t0
                return

    t = threading.Thread(target=block)
    t.start()
    time.sleep(0.5)
    a.agent.check.ttl_fail(ttl_id, "broken")
    t.join(30)
    if t.is_alive() or "index" not in result:
        fail("blocking health.service", f"no wake with the check critical: {result}")
    if int(result["index"]) <= int(index):
        fail("blocking health.service index", result)
    print(f"ok blocking query saw the check fail after {result['took']:.2f}s "
          f"({result['wakes']} wakes, index {index} -> {result['index']})", flush=True)

    _, critical = b.health.state("critical")
    if not any(c["CheckID"] == ttl_id for c in critical):
        fail("health.state critical", critical)
    _, node_checks = b.health.node(node_name)
    if not any(c["CheckID"] == ttl_id for c in node_checks):
        fail("health.node", node_checks)
    print("ok health.state / health.node", flush=True)

    # Filters.
    filtered = a.agent.services(filter_expr='Service == "pyweb"')
    if list(filtered) != ["pyweb1"]:
        fail("agent.services filter", filtered)
    print("ok ?filter", flush=True)

    # External node through the catalog.
    assert b.catalog.register(
        "ext-db",
        "10.9.9.9",
        service={"Service": "db", "ID": "db1", "Port": 5432},
        check={"CheckID": "db-alive", "Name": "db alive", "Status": "passing", "ServiceID": "db1"},
    )
    _, nodes = a.catalog.nodes()
    if "ext-db" not in [n["Node"] for n in nodes]:
        fail("catalog.nodes", nodes)
    _, node = a.catalog.node("ext-db")
    if "db1" not in node["Services"]:
        fail("catalog.node", node)
    _, healthy_db = a.health.service("db", passing=True)
    if len(healthy_db) != 1:
        fail("health.service db", healthy_db)
    assert a.catalog.deregister("ext-db")
    _, nodes = a.catalog.nodes()
    if "ext-db" in [n["Node"] for n in nodes]:
        fail("catalog.deregister", nodes)
    print("ok catalog.register / node / deregister", flush=True)

    # KV through the same client.
    assert a.kv.put("py/key", "value")
    _, item = b.kv.get("py/key")
    if item is None or item["Value"] != b"value":
        fail("kv", item)
    print("ok kv.put / kv.get", flush=True)

    # A transaction: applied atomically, results in order; a failed check
    # rolls every operation back.
    import base64
    enc = lambda s: base64.b64encode(s.encode()).decode()
    r = a.txn.put([
        {"KV": {"Verb": "set", "Key": "py/t1", "Value": enc("one")}},
        {"KV": {"Verb": "cas", "Key": "py/t2", "Value": enc("two"), "Index": 0}},
        {"KV": {"Verb": "get", "Key": "py/t1"}},
    ])
    if r.get("Errors") or len(r["Results"]) != 3 or base64.b64decode(r["Results"][2]["KV"]["Value"]) != b"one":
        fail("txn", r)
    try:
        a.txn.put([
            {"KV": {"Verb": "set", "Key": "py/t3", "Value": enc("three")}},
            {"KV": {"Verb": "check-not-exists", "Key": "py/t1"}},
        ])
        fail("txn rollback", "a failing transaction was accepted")
    except consul.ConsulException as e:
        if "409" not in str(e) and "OpIndex" not in str(e):
            fail("txn rollback", e)
    if b.kv.get("py/t3")[1] is not None:
        fail("txn rollback", "py/t3 was written by a rolled-back transaction")
    print("ok txn commit and rollback", flush=True)

    # Sessions and locks, as leader-election libraries use them: a session
    # on this agent's node takes a lock, a second session is refused, a
    # transaction checks the holder, renew and info answer, and destroying
    # the holder's session frees the key after its lock delay.
    s1 = a.session.create(name="py-lock", ttl=10, lock_delay=1)
    s2 = b.session.create(name="py-other", node=node_name, lock_delay=0)
    if not a.kv.put("py/lock", "held", acquire=s1):
        fail("kv acquire", "the first session was refused the free lock")
    if b.kv.put("py/lock", "stolen", acquire=s2):
        fail("kv acquire", "a second session took a held lock")
    _, item = b.kv.get("py/lock")
    if item is None or item.get("Session") != s1 or item["LockIndex"] != 1 or item["Value"] != b"held":
        fail("kv lock holder", item)
    r = a.txn.put([
        {"KV": {"Verb": "check-session", "Key": "py/lock", "Session": s1}},
        {"KV": {"Verb": "lock", "Key": "py/lock", "Value": enc("again"), "Session": s1}},
    ])
    if r.get("Errors"):
        fail("txn check-session / lock", r)
    try:
        a.txn.put([{"KV": {"Verb": "lock", "Key": "py/lock", "Session": s2}}])
        fail("txn lock", "a transaction took a held lock")
    except consul.ConsulException as e:
        if "already held" not in str(e):
            fail("txn lock", e)
    renewed = a.session.renew(s1)
    if renewed["ID"] != s1 or renewed["TTL"] != "10s" or renewed["LockDelay"] != 1_000_000_000:
        fail("session.renew", renewed)
    _, info = b.session.info(s1)
    if info is None or info["Node"] != node_name or info["Behavior"] != "release":
        fail("session.info", info)
    _, listed = b.session.list()
    if {s1, s2} - {s["ID"] for s in listed}:
        fail("session.list", listed)
    _, on_node = b.session.node(node_name)
    if {s1, s2} - {s["ID"] for s in on_node}:
        fail("session.node", on_node)
    assert a.session.destroy(s1)
    _, item = b.kv.get("py/lock")
    if item is None or item.get("Session") is not None or item["LockIndex"] != 1:
        fail("destroy releases", item)
    if b.session.info(s1)[1] is not None:
        fail("session.info after destroy", "the session is still there")
    try:
        a.session.renew(s1)
        fail("session.renew after destroy", "renewed a destroyed session")
    except consul.NotFound:
        pass
    # The 1 s lock delay refuses the next holder at first, not for ever.
    took = wait_for("lock after lock delay", lambda: b.kv.put("py/lock", "mine", acquire=s2), timeout=5.0)
    _, item = a.kv.get("py/lock")
    if item.get("Session") != s2 or item["LockIndex"] != 2:
        fail("second holder", item)
    if not b.kv.put("py/lock", "free", release=s2) or a.kv.get("py/lock")[1].get("Session"):
        fail("kv release", a.kv.get("py/lock")[1])
    assert b.session.destroy(s2)
    print("ok session create / renew / info / list / node / destroy, kv acquire / release, txn lock verbs, lock delay", flush=True)

    # Members lists this agent.
    members = a.agent.members()
    if node_name not in [m["Name"] for m in members]:
        fail("agent.members", members)
    print(f"ok agent.members ({len(members)} members)", flush=True)

    # Deregistering removes it from the catalog.
    assert a.agent.service.deregister("pyweb1")
    wait_for("catalog after deregister", lambda: not b.catalog.service("pyweb")[1])
    print("ok agent.service.deregister", flush=True)
    print("PASS", flush=True)


if __name__ == "__main__":
    main()
