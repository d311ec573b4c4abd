#!/usr/bin/env node
// Drives a mesh cluster with an unmodified Consul client library for
// Node.js (the `consul` package from npm, pinned in package-lock.json).
//
// Usage: node consul_client_check.js AGENT_HOST:PORT [OTHER_AGENT_HOST:PORT]
//
// Registers a service with a TTL check through the first agent, reads it
// back through the catalog and health endpoints of the second (so the
// answer crossed the cluster), watches a service's health, a key and a
// prefix with the library's Watch (blocking queries on X-Consul-Index),
// takes and releases a lock with a session, and runs a transaction. Every wait is bounded; any mismatch
// exits non-zero naming the step. Prints one line per step.
"use strict";

const Consul = require("consul");

function fail(step, msg) {
  console.log(`FAIL ${step}: ${typeof msg === "string" ? msg : JSON.stringify(msg)}`);
  process.exit(1);
}

function client(addr) {
  const i = addr.lastIndexOf(":");
  return new Consul({ host: addr.slice(0, i), port: Number(addr.slice(i + 1)) });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(step, fn, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e; // e.g. no leader during a failover
    }
    await sleep(100);
  }
  fail(step, `not true within ${timeoutMs} ms (last: ${last})`);
}

async function main() {
  const a = client(process.argv[2]);
  const b = process.argv[3] ? client(process.argv[3]) : a;

  const leader = await waitFor("status.leader", () => a.status.leader());
  console.log(`ok status.leader ${leader}`);
  const self = await a.agent.self();
  const nodeName = self.Config.NodeName;

  // A service with a TTL check on agent a.
  await a.agent.service.register({
    name: "nodeweb",
    id: "nodeweb1",
    port: 8080,
    tags: ["v2", "green"],
    meta: { owner: "node" },
    check: { ttl: "30s" },
  });
  const services = await a.agent.service.list();
  if (!services.nodeweb1 || services.nodeweb1.Port !== 8080) fail("agent.service.list", services);
  const checks = await a.agent.check.list();
  const ttlIds = Object.keys(checks).filter((id) => checks[id].ServiceID === "nodeweb1");
  if (ttlIds.length !== 1) fail("agent.check.list", checks);
  const ttlId = ttlIds[0];
  console.log(`ok agent.service.register (check ${ttlId})`);

  const rows = await waitFor("catalog.service.nodes", async () => {
    const r = await b.catalog.service.nodes("nodeweb");
    return r.length ? r : null;
  });
  const row = rows[0];
  if (row.ServiceID !== "nodeweb1" || row.Node !== nodeName || row.ServiceMeta.owner !== "node") {
    fail("catalog.service.nodes", row);
  }
  const all = await b.catalog.service.list();
  if (!all.nodeweb || [...all.nodeweb].sort().join(",") !== "green,v2") fail("catalog.service.list", all);
  console.log("ok catalog.service.nodes / catalog.service.list");

  // A new TTL check is critical; passing it shows in ?passing.
  const before = await b.health.service({ service: "nodeweb", passing: true });
  if (before.length) fail("health.service passing before pass", before);
  await a.agent.check.pass({ id: ttlId, note: "all good" });
  await waitFor("health.service ?passing", async () => {
    const r = await b.health.service({ service: "nodeweb", passing: true });
    return r.length === 1;
  });
  console.log("ok agent.check.pass -> health.service?passing");

  // A Watch on one service's health wakes for that service only: checks of
  // another service on the same agent change five times, then this one's.
  await a.agent.service.register({ name: "nodeother", id: "nodeother1", port: 8081, check: { ttl: "30s" } });
  const otherTtl = await waitFor("nodeother's check", async () => {
    const c = await a.agent.check.list();
    return Object.keys(c).find((id) => c[id].ServiceID === "nodeother1");
  });
  await waitFor("nodeother in the catalog", async () => (await b.catalog.service.nodes("nodeother")).length === 1);
  // The servers add the node's own serfHealth check once they see the
  // agent alive; start from that settled state.
  await waitFor("serfHealth on nodeweb's node", async () => {
    const r = await b.health.service("nodeweb");
    return r.length === 1 && r[0].Checks.some((c) => c.CheckID === "serfHealth");
  });
  const health = [];
  const hwatch = b.watch({ method: b.health.service, options: { service: "nodeweb", wait: "5s" } });
  hwatch.on("change", (data) => health.push(data.map((r) => r.Checks.map((c) => c.Status).join("/")).join(",")));
  hwatch.on("error", (e) => fail("health watch", String(e)));
  await waitFor("health watch first answer", () => health.length >= 1, 10000);
  for (let i = 0; i < 5; i++) {
    if (i % 2 === 0) await a.agent.check.pass({ id: otherTtl, note: `round ${i}` });
    else await a.agent.check.warn({ id: otherTtl, note: `round ${i}` });
  }
  await waitFor("nodeother's last status", async () => {
    const r = await b.health.checks("nodeother");
    return r.length && r[0].Status === "passing" && r[0].Output === "round 4";
  });
  await sleep(500);
  if (health.length !== 1) fail("health watch woke for another service", health);
  await a.agent.check.fail({ id: ttlId, note: "down" });
  await waitFor("health watch saw nodeweb fail", () => health.some((h) => h.includes("critical")), 10000);
  hwatch.end();
  await a.agent.check.pass({ id: ttlId, note: "back" });
  await a.agent.service.deregister("nodeother1");
  console.log(`ok watch on a service's health (${health.length} answers: ${health.join(" | ")})`);

  // The library's Watch (blocking queries) sees a key change, and only
  // then: a single key's index is its own ModifyIndex.
  await a.kv.set("node/watched", "one");
  const seen = [];
  const watch = b.watch({ method: b.kv.get, options: { key: "node/watched", wait: "5s" } });
  watch.on("change", (data) => seen.push(data && data.Value));
  watch.on("error", (e) => fail("watch", String(e)));
  await waitFor("watch first answer", () => seen.length >= 1, 10000);
  for (let i = 0; i < 5; i++) await a.kv.set(`node/other-${i}`, "x"); // other keys
  await sleep(500);
  if (seen.length !== 1) fail("watch woke for other keys", seen);
  await a.kv.set("node/watched", "two");
  await waitFor("watch saw the change", () => seen.includes("two"), 10000);
  watch.end();
  console.log(`ok watch on a key (${seen.length} answers: ${seen.join(", ")})`);

  // A Watch on a prefix (consul-template's `ls`, `consul watch -type
  // keyprefix`) wakes for writes and deletes under it only.
  await a.kv.set("node/dir/a", "1");
  await a.kv.set("node/dir/b", "1");
  const listed = [];
  const pwatch = b.watch({ method: b.kv.get, options: { key: "node/dir/", recurse: true, wait: "5s" } });
  pwatch.on("change", (data) => listed.push((data || []).map((e) => e.Key.slice(9)).join("+")));
  pwatch.on("error", (e) => fail("prefix watch", String(e)));
  await waitFor("prefix watch first answer", () => listed.length >= 1, 10000);
  for (let i = 0; i < 3; i++) await a.kv.set(`node/outside-${i}`, "x");
  await a.kv.del("node/outside-0");
  await a.kv.del({ key: "node/outside-", recurse: true });
  await sleep(500);
  if (listed.length !== 1) fail("prefix watch woke for writes or deletes elsewhere", listed);
  await a.kv.set("node/dir/c", "1");
  await waitFor("prefix watch saw a write", () => listed.includes("a+b+c"), 10000);
  await a.kv.del("node/dir/a");
  await waitFor("prefix watch saw a delete", () => listed.includes("b+c"), 10000);
  pwatch.end();
  console.log(`ok watch on a prefix (${listed.length} answers: ${listed.join(" | ")})`);

  // A lock: a session acquires a key, a second session cannot, release.
  // (A key of this run's own: a lock freed by destroying its session stays
  // blocked for the session's lock-delay, as in Consul.)
  const lockKey = `node/lock-${process.pid}-${Date.now()}`;
  const s1 = (await a.session.create({ name: "node-lock", ttl: "15s" })).ID;
  const s2 = (await b.session.create({ name: "node-lock-2", ttl: "15s" })).ID;
  if (!(await a.kv.set({ key: lockKey, value: "holder-1", acquire: s1 }))) fail("acquire", s1);
  if (await b.kv.set({ key: lockKey, value: "holder-2", acquire: s2 })) fail("second acquire", s2);
  const held = await b.kv.get(lockKey);
  if (!held || held.Session !== s1) fail("kv.get lock holder", held);
  await a.session.renew(s1);
  if (!(await a.kv.set({ key: lockKey, value: "", release: s1 }))) fail("release", s1);
  if (!(await b.kv.set({ key: lockKey, value: "holder-2", acquire: s2 }))) fail("acquire after release", s2);
  await a.session.destroy(s1);
  await b.session.destroy(s2);
  console.log("ok session.create / kv acquire / release");

  // A transaction, and one that rolls back.
  const enc = (s) => Buffer.from(s).toString("base64");
  const txn = await a.transaction.create([
    { KV: { Verb: "set", Key: "node/t1", Value: enc("one") } },
    { KV: { Verb: "get", Key: "node/t1" } },
  ]);
  if (!txn.Results || Buffer.from(txn.Results[1].KV.Value, "base64").toString() !== "one") fail("txn", txn);
  let rolledBack = false;
  try {
    await a.transaction.create([
      { KV: { Verb: "set", Key: "node/t2", Value: enc("two") } },
      { KV: { Verb: "check-not-exists", Key: "node/t1" } },
    ]);
  } catch (e) {
    // Consul answers a rolled-back transaction 409 (a 400 would be a
    // request the agent did not understand).
    const status = e && e.response && e.response.statusCode;
    if (status !== 409) fail("txn rollback status", `${status}: ${e}`);
    rolledBack = true;
  }
  if (!rolledBack || (await b.kv.get("node/t2"))) fail("txn rollback", "a failing transaction took effect");
  console.log("ok transaction / rollback");

  await a.agent.service.deregister("nodeweb1");
  await waitFor("deregistered", async () => (await b.catalog.service.nodes("nodeweb")).length === 0);
  console.log("ok agent.service.deregister");
  console.log("PASS");
}

main().catch((e) => fail("unexpected", e && e.stack ? e.stack : String(e)));
