//! A tour of the HTTP API as Consul's clients use it, run inside the
//! Connect scenario once fcs and fcc talk through their sidecars: every
//! endpoint family (agent, checks, catalog, health, intentions, CA,
//! sessions, transactions, status, operator, metrics, DNS over TCP, HTTPS),
//! each answer judged on its status and on the fields a client reads, and
//! malformed or refused requests for most families (answered 4xx, or 500
//! where Consul answers 500), with the state checked unchanged after some.
//!
//! Calls are retried on a 5xx or a transport error (the tour runs soon
//! after a failover); the tour creates what it later deletes under names
//! of its own, so a retried write can only fail the tour, never pass it.
//!
//! It brings the API's handlers into the simulator, so they run against
//! servers that have just failed over and agents that have just restarted,
//! and the coverage measure (`sim/coverage/run.sh`) counts them.

use std::time::Duration;

use std::net::IpAddr;

use madsim::time::{sleep, Instant};
use mesh_net::http_client::{HttpClient, HttpsTarget};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::agent_hosts::{DNS_PORT, HTTPS_PORT};
use crate::agents::http;
use crate::scenarios::Run;

/// How long one call may keep failing for reasons that are not its own
/// (5xx, no leader, a connection refused) before the tour fails.
const RETRY_FOR: Duration = Duration::from_secs(15);

/// Calls `method path` on `addr` until it answers `want` or something
/// other than a 5xx or a transport error (bounded by [`RETRY_FOR`]); the answer must
/// have status `want`. Returns the body as JSON (`Null` if it is not).
async fn expect(
    run: &Run,
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    want: u16,
) -> Result<Value, String> {
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        match http(run, addr.to_owned(), method, path, body.as_bytes()).await {
            Ok((status, text)) if status == want || status < 500 => {
                if status != want {
                    return Err(format!(
                        "api tour: {method} {path} on {addr}: {status} (wanted {want}): {text}"
                    ));
                }
                return Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)));
            }
            other if Instant::now() > deadline => {
                return Err(format!(
                    "api tour: {method} {path} on {addr} kept failing: {other:?}"
                ))
            }
            _ => sleep(Duration::from_millis(200)).await,
        }
    }
}

/// `GET /v1/agent/self` over HTTPS on the agent at `agent` (host:port of
/// its HTTP API; HTTPS is on [`HTTPS_PORT`] of the same host), verifying
/// the agent's certificate against the operator CA.
async fn https_self(run: &Run, agent: &str) -> Result<Value, String> {
    let host = agent.rsplit_once(':').map_or(agent, |(h, _)| h).to_owned();
    let target = HttpsTarget::new(run.cluster.rpc_tls.ca_pem(), None, "client.dc1.consul")?;
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        let target = target.clone();
        let addr = format!("{host}:{HTTPS_PORT}");
        let answer = run
            .cluster
            .client
            .spawn(async move {
                HttpClient::new(addr, Duration::from_secs(5))
                    .with_tls(Some(target))
                    .request("GET", "/v1/agent/self", Vec::new())
                    .await
                    .map(|r| (r.status, r.text()))
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| format!("client task failed: {e}"))?;
        match answer {
            Ok((200, text)) => {
                return serde_json::from_str(&text)
                    .map_err(|e| format!("api tour: HTTPS agent/self: {e}"))
            }
            other if Instant::now() > deadline => {
                return Err(format!(
                    "api tour: HTTPS agent/self kept failing: {other:?}"
                ))
            }
            _ => sleep(Duration::from_millis(200)).await,
        }
    }
}

/// `fcs.service.consul` A over DNS's TCP transport (RFC 1035 4.2.2: each
/// message prefixed by its length) from the agent whose HTTP API is at
/// `agent`; the addresses answered.
async fn dns_over_tcp(run: &Run, agent: &str) -> Result<Vec<IpAddr>, String> {
    let host = agent.rsplit_once(':').map_or(agent, |(h, _)| h).to_owned();
    let addr = format!("{host}:{DNS_PORT}");
    run.cluster
        .client
        .spawn(async move {
            let exchange = async {
                let mut tcp = tokio::net::TcpStream::connect(&addr).await?;
                let query = mesh_core::dns::a_query(9, "fcs.service.consul.")
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let len = u16::try_from(query.len()).expect("a small query");
                tcp.write_all(&len.to_be_bytes()).await?;
                tcp.write_all(&query).await?;
                tcp.flush().await?;
                let mut len = [0u8; 2];
                tcp.read_exact(&mut len).await?;
                let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
                tcp.read_exact(&mut reply).await?;
                mesh_core::dns::read_answer(&reply)
                    .map(|a| a.addresses)
                    .map_err(|e| std::io::Error::other(e.to_string()))
            };
            madsim::time::timeout(Duration::from_secs(5), exchange)
                .await
                .map_err(|_| "api tour: DNS over TCP: no answer within 5 s".to_string())?
                .map_err(|e| format!("api tour: DNS over TCP: {e}"))
        })
        .await
        .map_err(|e| format!("client task failed: {e}"))?
}

/// Fails the tour with `what` unless `ok`.
fn judge(ok: bool, what: &str, seen: &Value) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        let mut seen = seen.to_string();
        seen.truncate(600);
        Err(format!("api tour: {what}; got {seen}"))
    }
}

/// Whether `v` is an array with nothing in it (not null, not text).
fn is_empty_array(v: &Value) -> bool {
    v.as_array().is_some_and(Vec::is_empty)
}

/// The ids of `/v1/agent/services`' answer, sorted.
fn service_ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

fn array_len(v: &Value) -> usize {
    v.as_array().map_or(0, Vec::len)
}

/// Whether some element of array `v` has `field` equal to `want`.
fn any_with(v: &Value, field: &str, want: &str) -> bool {
    v.as_array()
        .is_some_and(|a| a.iter().any(|e| e[field].as_str() == Some(want)))
}

/// The value of the first Prometheus sample of `series` with `labels`
/// (`None` if absent or unreadable).
fn sample(text: &str, series: &str, labels: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The whole tour. `agent` is fcc00's agent, `server` a server's HTTP
/// address, `fcs_metrics` fcs's sidecar's metrics address; fcs and fcc are
/// registered with sidecars, fcc → fcs allowed, and fcs has received
/// `fcs_received` requests in all (over every restart of its sidecar).
pub(crate) async fn tour(
    run: &Run,
    agent: &str,
    server: &str,
    fcs_metrics: &str,
    fcs_received: u64,
) -> Result<u64, String> {
    let https = https_self(run, agent).await?;
    judge(
        https["Config"]["NodeName"] == "fcc00",
        "agent/self over HTTPS (port 8501, the agent's certificate) names fcc00",
        &https,
    )?;
    let fcs00 = run.cluster.agents[crate::connect::FCS].ip;
    let addresses = dns_over_tcp(run, agent).await?;
    judge(
        addresses.contains(&fcs00),
        &format!("DNS over TCP answers fcs.service.consul with fcs00 ({fcs00})"),
        &Value::String(format!("{addresses:?}")),
    )?;

    let mut calls = 0u64;
    macro_rules! call {
        ($addr:expr, $method:expr, $path:expr, $body:expr, $want:expr) => {{
            calls += 1;
            expect(run, $addr, $method, $path, $body, $want).await?
        }};
    }

    // The agent itself.
    let me = call!(agent, "GET", "/v1/agent/self", "", 200);
    judge(
        me["Config"]["NodeName"] == "fcc00" && me["Config"]["Datacenter"].is_string(),
        "agent/self names fcc00 and its datacenter",
        &me,
    )?;
    let members = call!(agent, "GET", "/v1/agent/members", "", 200);
    judge(
        any_with(&members, "Name", "fcs00") && any_with(&members, "Name", "fcc00"),
        "agent/members lists both client hosts",
        &members,
    )?;
    let services = call!(agent, "GET", "/v1/agent/services", "", 200);
    judge(
        services["fcc"]["Service"] == "fcc"
            && services["fcc-sidecar-proxy"]["Kind"] == "connect-proxy",
        "agent/services holds fcc and its sidecar",
        &services,
    )?;
    let fcc = call!(agent, "GET", "/v1/agent/service/fcc", "", 200);
    judge(fcc["Service"] == "fcc", "agent/service/fcc", &fcc)?;
    call!(agent, "GET", "/v1/agent/service/no-such-service", "", 404);
    let metrics = call!(agent, "GET", "/v1/agent/metrics", "", 200);
    judge(
        metrics["Gauges"].is_array() && metrics["Counters"].is_array(),
        "agent/metrics has Gauges and Counters",
        &metrics,
    )?;
    let prom = call!(agent, "GET", "/v1/agent/metrics?format=prometheus", "", 200);
    judge(
        prom.as_str().is_some_and(|t| t.contains("# TYPE")),
        "agent/metrics?format=prometheus is Prometheus text",
        &prom,
    )?;

    // fcs's sidecar's own counters, as Prometheus scrapes them: it has
    // accepted connections since its last restart, no more than fcs
    // received requests, and carried bytes both ways.
    let sidecar = call!(fcs_metrics, "GET", "/metrics", "", 200);
    let text = sidecar.as_str().unwrap_or_default();
    let accepted = sample(text, "mesh_sidecar_inbound_accepted_total", "fcs");
    let bytes_in = sample(text, "mesh_sidecar_bytes_total", "direction=\"in\"");
    judge(
        accepted.is_some_and(|n| n >= 1 && n <= fcs_received) && bytes_in.is_some_and(|n| n > 0),
        &format!(
            "fcs's sidecar counts 1..={fcs_received} accepted connections and bytes in \
             (accepted {accepted:?}, bytes in {bytes_in:?})"
        ),
        &sidecar,
    )?;
    call!(fcs_metrics, "GET", "/nothing-here", "", 404);

    // A TTL check through its life.
    call!(
        agent,
        "PUT",
        "/v1/agent/check/register",
        r#"{"Name":"tour","CheckID":"tour","TTL":"60s"}"#,
        200
    );
    for (verb, status) in [
        ("pass", "passing"),
        ("warn", "warning"),
        ("fail", "critical"),
    ] {
        call!(
            agent,
            "PUT",
            &format!("/v1/agent/check/{verb}/tour?note=tour"),
            "",
            200
        );
        let checks = call!(agent, "GET", "/v1/agent/checks", "", 200);
        judge(
            checks["tour"]["Status"] == status,
            &format!("check/{verb} leaves the check {status}"),
            &checks,
        )?;
    }
    call!(
        agent,
        "PUT",
        "/v1/agent/check/update/tour",
        r#"{"Status":"passing","Output":"all good"}"#,
        200
    );
    let checks = call!(agent, "GET", "/v1/agent/checks", "", 200);
    judge(
        checks["tour"]["Status"] == "passing" && checks["tour"]["Output"] == "all good",
        "check/update sets status and output",
        &checks,
    )?;
    call!(agent, "PUT", "/v1/agent/check/register", "{", 400);
    call!(agent, "PUT", "/v1/agent/check/deregister/tour", "", 200);
    let checks = call!(agent, "GET", "/v1/agent/checks", "", 200);
    judge(
        checks.is_object() && checks.get("tour").is_none(),
        "check/deregister removes it",
        &checks,
    )?;

    // HTTP checks, run by the agent: one against the agent's own API
    // (passing), one against a path it answers 404 (critical).
    let own = format!("http://{agent}");
    call!(
        agent,
        "PUT",
        "/v1/agent/check/register",
        &format!(
            r#"{{"Name":"tour-http","CheckID":"tour-http","HTTP":"{own}/v1/status/leader","Interval":"1s","Timeout":"1s"}}"#
        ),
        200
    );
    call!(
        agent,
        "PUT",
        "/v1/agent/check/register",
        &format!(
            r#"{{"Name":"tour-http-404","CheckID":"tour-http-404","HTTP":"{own}/v1/nothing","Interval":"1s","Timeout":"1s"}}"#
        ),
        200
    );
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        let checks = call!(agent, "GET", "/v1/agent/checks", "", 200);
        if checks["tour-http"]["Status"] == "passing"
            && checks["tour-http-404"]["Status"] == "critical"
            && checks["tour-http"]["Type"] == "http"
        {
            break;
        }
        if Instant::now() > deadline {
            return judge(false, "HTTP checks reach passing and critical", &checks).map(|_| 0);
        }
        sleep(Duration::from_millis(500)).await;
    }
    call!(
        agent,
        "PUT",
        "/v1/agent/check/deregister/tour-http",
        "",
        200
    );
    call!(
        agent,
        "PUT",
        "/v1/agent/check/deregister/tour-http-404",
        "",
        200
    );

    // A service through its life, with maintenance.
    call!(
        agent,
        "PUT",
        "/v1/agent/service/register",
        r#"{"Name":"tour-svc","ID":"tour-svc","Port":7070,"Tags":["a"]}"#,
        200
    );
    call!(
        agent,
        "PUT",
        "/v1/agent/service/register",
        r#"{"Port":"x"}"#,
        400
    );
    call!(
        agent,
        "PUT",
        "/v1/agent/service/maintenance/tour-svc?enable=true&reason=tour",
        "",
        200
    );
    let health = call!(
        agent,
        "GET",
        "/v1/agent/health/service/id/tour-svc",
        "",
        503
    );
    judge(
        health["AggregatedStatus"] == "maintenance" || health["AggregatedStatus"] == "critical",
        "a service in maintenance is not healthy",
        &health,
    )?;
    call!(
        agent,
        "PUT",
        "/v1/agent/service/maintenance/tour-svc?enable=false",
        "",
        200
    );
    let health = call!(
        agent,
        "GET",
        "/v1/agent/health/service/name/tour-svc",
        "",
        200
    );
    judge(
        array_len(&health) == 1 && health[0]["AggregatedStatus"] == "passing",
        "out of maintenance, the service is passing",
        &health,
    )?;
    call!(
        agent,
        "PUT",
        "/v1/agent/service/deregister/tour-svc",
        "",
        200
    );
    let services = call!(agent, "GET", "/v1/agent/services", "", 200);
    judge(
        services.is_object() && services.get("tour-svc").is_none(),
        "service/deregister removes it",
        &services,
    )?;
    call!(
        agent,
        "PUT",
        "/v1/agent/maintenance?enable=true&reason=tour",
        "",
        200
    );
    call!(agent, "PUT", "/v1/agent/maintenance?enable=false", "", 200);
    // Reload, as an operator adds a service file to the config dir and
    // runs `mesh reload`, then takes it out again. The harness writes the
    // files at each read, with a newly signed client certificate, so the
    // RPC port's TLS is replaced too and the calls after it use it.
    let before = service_ids(&call!(agent, "GET", "/v1/agent/services", "", 200));
    let files = run.cluster.agents[crate::connect::FCC]
        .extra_services
        .clone();
    files
        .lock()
        .expect("extra services lock")
        .push(serde_json::json!({
            "id": "tour-reload", "name": "tour-reload", "port": 7070,
            "check": { "id": "tour-reload-ttl", "name": "tour reload", "ttl": "60s" }
        }));
    call!(agent, "PUT", "/v1/agent/reload", "", 200);
    let services = call!(agent, "GET", "/v1/agent/services", "", 200);
    let mut with_new = before.clone();
    with_new.push("tour-reload".into());
    with_new.sort();
    judge(
        service_ids(&services) == with_new && services["tour-reload"]["Port"] == 7070,
        "reload registers the service added to the files and keeps the others",
        &services,
    )?;
    let checks = call!(agent, "GET", "/v1/agent/checks", "", 200);
    judge(
        checks["tour-reload-ttl"]["ServiceID"] == "tour-reload",
        "reload registers the service's check",
        &checks,
    )?;
    files.lock().expect("extra services lock").clear();
    call!(agent, "PUT", "/v1/agent/reload", "", 200);
    let services = call!(agent, "GET", "/v1/agent/services", "", 200);
    judge(
        service_ids(&services) == before,
        "reload removes the service taken out of the files, and only it",
        &services,
    )?;
    let checks = call!(agent, "GET", "/v1/agent/checks", "", 200);
    judge(
        checks.get("tour-reload-ttl").is_none(),
        "its check goes with it",
        &checks,
    )?;

    // Connect: the CA, leaves and intentions.
    let roots = call!(server, "GET", "/v1/connect/ca/roots", "", 200);
    let active = roots["ActiveRootID"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let trust_domain = roots["TrustDomain"].as_str().unwrap_or_default().to_owned();
    judge(
        !active.is_empty()
            && !trust_domain.is_empty()
            && roots["Roots"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|r| r["ID"] == active.as_str() && r["Active"] == true)
            }),
        "connect/ca/roots names an active root and the trust domain",
        &roots,
    )?;
    let config = call!(server, "GET", "/v1/connect/ca/configuration", "", 200);
    judge(
        config["Provider"] == "consul",
        "the CA provider is consul",
        &config,
    )?;
    call!(
        server,
        "PUT",
        "/v1/connect/ca/configuration",
        r#"{"Provider":"vault"}"#,
        400
    );
    call!(
        server,
        "PUT",
        "/v1/connect/ca/configuration",
        r#"{"Provider":"consul","Config":{"LeafCertTTL":72}}"#,
        400
    );
    call!(server, "DELETE", "/v1/connect/ca/roots", "", 405);
    let unchanged = call!(server, "GET", "/v1/connect/ca/roots", "", 200);
    judge(
        unchanged["ActiveRootID"] == active.as_str(),
        "refused CA changes left the active root alone",
        &unchanged,
    )?;
    let agent_roots = call!(agent, "GET", "/v1/agent/connect/ca/roots", "", 200);
    judge(
        agent_roots["ActiveRootID"] == active.as_str(),
        "the agent serves the cluster's active root",
        &agent_roots,
    )?;
    let leaf = call!(agent, "GET", "/v1/agent/connect/ca/leaf/fcc", "", 200);
    judge(
        leaf["Service"] == "fcc"
            && leaf["CertPEM"]
                .as_str()
                .is_some_and(|p| p.contains("BEGIN CERTIFICATE"))
            && leaf["PrivateKeyPEM"]
                .as_str()
                .is_some_and(|p| p.contains("PRIVATE KEY")),
        "agent/connect/ca/leaf/fcc is a certificate with its key",
        &leaf,
    )?;
    let intentions = call!(agent, "GET", "/v1/connect/intentions", "", 200);
    judge(
        intentions.as_array().is_some_and(|a| {
            a.iter()
                .any(|i| i["SourceName"] == "fcc" && i["DestinationName"] == "fcs")
        }),
        "connect/intentions lists fcc -> fcs",
        &intentions,
    )?;
    let exact = call!(
        agent,
        "GET",
        "/v1/connect/intentions/exact?source=fcc&destination=fcs",
        "",
        200
    );
    let check = call!(
        agent,
        "GET",
        "/v1/connect/intentions/check?source=fcc&destination=fcs",
        "",
        200
    );
    judge(
        // The scenario's last change allowed fcc -> fcs.
        exact["Action"] == "allow" && check["Allowed"] == true,
        "intentions/check agrees with the exact intention",
        &serde_json::json!([exact, check]),
    )?;
    let authorize = call!(
        agent,
        "POST",
        "/v1/agent/connect/authorize",
        &format!(
            r#"{{"Target":"fcs","ClientCertURI":"spiffe://{trust_domain}/ns/default/dc/dc1/svc/fcc"}}"#
        ),
        200
    );
    judge(
        authorize["Authorized"] == true,
        "agent/connect/authorize agrees with intentions/check",
        &authorize,
    )?;
    call!(agent, "POST", "/v1/agent/connect/authorize", "[]", 400);
    call!(
        agent,
        "PUT",
        "/v1/connect/intentions/exact?source=tour-a&destination=tour-b",
        r#"{"Action":"deny"}"#,
        200
    );
    let denied = call!(
        agent,
        "GET",
        "/v1/connect/intentions/check?source=tour-a&destination=tour-b",
        "",
        200
    );
    judge(
        denied["Allowed"] == false,
        "a deny intention denies",
        &denied,
    )?;
    let matched = call!(
        agent,
        "GET",
        "/v1/connect/intentions/match?by=source&name=tour-a",
        "",
        200
    );
    judge(
        any_with(&matched["tour-a"], "DestinationName", "tour-b"),
        "intentions/match by source finds it",
        &matched,
    )?;
    call!(
        agent,
        "PUT",
        "/v1/connect/intentions/exact?source=tour-a",
        r#"{"Action":"deny"}"#,
        400
    );
    call!(
        agent,
        "DELETE",
        "/v1/connect/intentions/exact?source=tour-a&destination=tour-b",
        "",
        200
    );
    call!(
        agent,
        "GET",
        "/v1/connect/intentions/exact?source=tour-a&destination=tour-b",
        "",
        404
    );

    // Consul 1.9+'s config entries: a destination's intentions as one entry.
    let written = call!(
        agent,
        "PUT",
        "/v1/config",
        r#"{"Kind":"service-intentions","Name":"tour-b","Sources":[{"Name":"*","Action":"deny"},{"Name":"tour-a","Action":"allow"}]}"#,
        200
    );
    judge(written == true, "PUT /v1/config answers true", &written)?;
    let entry = call!(
        agent,
        "GET",
        "/v1/config/service-intentions/tour-b",
        "",
        200
    );
    judge(
        entry["Sources"].as_array().map(Vec::len) == Some(2)
            && entry["Sources"][0]["Name"] == "tour-a"
            && entry["Sources"][0]["Precedence"] == 9,
        "a service-intentions entry lists its sources, exact names first",
        &entry,
    )?;
    let allowed = call!(
        agent,
        "GET",
        "/v1/connect/intentions/check?source=tour-a&destination=tour-b",
        "",
        200
    );
    judge(
        allowed["Allowed"] == true,
        "the entry's allow decides",
        &allowed,
    )?;
    let stale = call!(
        agent,
        "PUT",
        "/v1/config?cas=1",
        r#"{"Kind":"service-intentions","Name":"tour-b","Sources":[{"Name":"tour-a","Action":"deny"}]}"#,
        200
    );
    judge(
        stale == false,
        "a config write with a stale ?cas changes nothing",
        &stale,
    )?;
    call!(
        agent,
        "PUT",
        "/v1/config",
        r#"{"Kind":"service-defaults","Name":"tour-b","Protocol":"http"}"#,
        400
    );
    let entries = call!(agent, "GET", "/v1/config/service-intentions", "", 200);
    judge(
        any_with(&entries, "Name", "tour-b"),
        "config entries list the entry",
        &entries,
    )?;
    call!(
        agent,
        "DELETE",
        "/v1/config/service-intentions/tour-b",
        "",
        200
    );
    call!(
        agent,
        "GET",
        "/v1/config/service-intentions/tour-b",
        "",
        404
    );

    // Consul's older intention API, by ID.
    let created = call!(
        agent,
        "POST",
        "/v1/connect/intentions",
        r#"{"SourceName":"tour-c","DestinationName":"tour-d","Action":"allow","Meta":{"by":"tour"}}"#,
        200
    );
    let id = created["ID"].as_str().unwrap_or_default().to_owned();
    judge(
        !id.is_empty(),
        "POST connect/intentions returns an ID",
        &created,
    )?;
    call!(
        agent,
        "POST",
        "/v1/connect/intentions",
        r#"{"SourceName":"tour-c","DestinationName":"tour-d","Action":"deny"}"#,
        409
    );
    call!(
        agent,
        "POST",
        "/v1/connect/intentions",
        r#"{"SourceName":"tour-c","DestinationName":"tour-e","Action":"maybe"}"#,
        400
    );
    let by_id = call!(
        agent,
        "GET",
        &format!("/v1/connect/intentions/{id}"),
        "",
        200
    );
    judge(
        by_id["SourceName"] == "tour-c" && by_id["Meta"]["by"] == "tour",
        "GET connect/intentions/:id",
        &by_id,
    )?;
    call!(
        agent,
        "PUT",
        &format!("/v1/connect/intentions/{id}"),
        r#"{"Action":"deny"}"#,
        200
    );
    call!(
        agent,
        "PUT",
        &format!("/v1/connect/intentions/{id}"),
        r#"{"SourceName":"tour-x","DestinationName":"tour-d","Action":"deny"}"#,
        400
    );
    let flipped = call!(
        agent,
        "GET",
        "/v1/connect/intentions/check?source=tour-c&destination=tour-d",
        "",
        200
    );
    judge(
        flipped["Allowed"] == false,
        "an update by ID took",
        &flipped,
    )?;
    call!(
        agent,
        "DELETE",
        &format!("/v1/connect/intentions/{id}"),
        "",
        200
    );
    call!(
        agent,
        "GET",
        &format!("/v1/connect/intentions/{id}"),
        "",
        404
    );
    call!(
        agent,
        "DELETE",
        &format!("/v1/connect/intentions/{id}"),
        "",
        404
    );

    // The catalog and health, on a server.
    let dcs = call!(server, "GET", "/v1/catalog/datacenters", "", 200);
    judge(array_len(&dcs) >= 1, "catalog/datacenters", &dcs)?;
    let nodes = call!(server, "GET", "/v1/catalog/nodes", "", 200);
    judge(
        any_with(&nodes, "Node", "fcs00") && any_with(&nodes, "Node", "fcc00"),
        "catalog/nodes lists both client hosts",
        &nodes,
    )?;
    let catalog_services = call!(server, "GET", "/v1/catalog/services", "", 200);
    judge(
        catalog_services.get("fcs").is_some()
            && catalog_services.get("fcs-sidecar-proxy").is_some(),
        "catalog/services holds fcs and its sidecar",
        &catalog_services,
    )?;
    // Prometheus' consul_sd narrows the service list with ?filter and
    // ?node-meta, judged per instance with its node.
    let filtered = call!(
        server,
        "GET",
        "/v1/catalog/services?filter=ServiceName%20%3D%3D%20%22fcs%22",
        "",
        200
    );
    judge(
        filtered
            .as_object()
            .is_some_and(|o| o.len() == 1 && o.contains_key("fcs")),
        "catalog/services ?filter keeps only fcs",
        &filtered,
    )?;
    let unmatched = call!(
        server,
        "GET",
        "/v1/catalog/services?node-meta=no-such-key:x",
        "",
        200
    );
    judge(
        unmatched.as_object().is_some_and(|o| o.is_empty()),
        "catalog/services ?node-meta that no node carries lists nothing",
        &unmatched,
    )?;
    let fcs = call!(server, "GET", "/v1/catalog/service/fcs", "", 200);
    judge(
        any_with(&fcs, "ServiceName", "fcs") && any_with(&fcs, "Node", "fcs00"),
        "catalog/service/fcs is on fcs00",
        &fcs,
    )?;
    // `?filter=` (Consul's bexpr): equality, a regex, and a bad expression.
    let filtered = call!(
        server,
        "GET",
        "/v1/catalog/service/fcs?filter=Node%20%3D%3D%20%22fcs00%22",
        "",
        200
    );
    judge(
        array_len(&filtered) == array_len(&fcs) && array_len(&filtered) >= 1,
        "catalog/service/fcs?filter=Node == \"fcs00\" keeps fcs00's instance",
        &filtered,
    )?;
    let none = call!(
        server,
        "GET",
        "/v1/catalog/service/fcs?filter=Node%20%3D%3D%20%22nowhere%22",
        "",
        200
    );
    judge(is_empty_array(&none), "a filter matching nothing", &none)?;
    let by_regex = call!(
        server,
        "GET",
        "/v1/health/service/fcs?filter=Service.Service%20matches%20%22%5Efc%5Bs%5D%24%22%20and%20Checks.Status%20%21%3D%20%22critical%22",
        "",
        200
    );
    judge(
        by_regex
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|e| e["Service"]["Service"] == "fcs")),
        "health/service/fcs filtered by a regex and a check status",
        &by_regex,
    )?;
    let no_regex_match = call!(
        server,
        "GET",
        "/v1/health/service/fcs?filter=Service.Service%20matches%20%22%5Efcc%24%22",
        "",
        200
    );
    judge(
        is_empty_array(&no_regex_match),
        "a regex matching no service name filters everything out",
        &no_regex_match,
    )?;
    call!(
        server,
        "GET",
        "/v1/catalog/service/fcs?filter=Node%20%3D%3D",
        "",
        400
    );
    let node = call!(server, "GET", "/v1/catalog/node/fcs00", "", 200);
    judge(
        node["Node"]["Node"] == "fcs00" && node["Services"].get("fcs").is_some(),
        "catalog/node/fcs00 holds fcs",
        &node,
    )?;
    let proxies = call!(server, "GET", "/v1/catalog/connect/fcs", "", 200);
    judge(
        any_with(&proxies, "ServiceKind", "connect-proxy"),
        "catalog/connect/fcs lists its sidecar",
        &proxies,
    )?;
    call!(
        server,
        "PUT",
        "/v1/catalog/register",
        r#"{"Node":"tour-ext","Address":"10.9.9.9","Service":{"Service":"tour-ext","Port":80}}"#,
        200
    );
    let ext = call!(server, "GET", "/v1/catalog/service/tour-ext", "", 200);
    judge(
        any_with(&ext, "Address", "10.9.9.9"),
        "catalog/register took",
        &ext,
    )?;
    call!(
        server,
        "PUT",
        "/v1/catalog/register",
        r#"{"Address":1}"#,
        400
    );
    call!(
        server,
        "PUT",
        "/v1/catalog/deregister",
        r#"{"Node":"tour-ext"}"#,
        200
    );
    let ext = call!(server, "GET", "/v1/catalog/service/tour-ext", "", 200);
    judge(is_empty_array(&ext), "catalog/deregister removed it", &ext)?;
    let healthy = call!(server, "GET", "/v1/health/service/fcs?passing", "", 200);
    judge(
        healthy
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["Service"]["Service"] == "fcs")),
        "health/service/fcs?passing has fcs",
        &healthy,
    )?;
    let connect_health = call!(server, "GET", "/v1/health/connect/fcs", "", 200);
    judge(
        connect_health
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["Service"]["Kind"] == "connect-proxy")),
        "health/connect/fcs has the sidecar",
        &connect_health,
    )?;
    let fcs_checks = call!(server, "GET", "/v1/health/checks/fcs", "", 200);
    judge(
        any_with(&fcs_checks, "CheckID", "fcs-tcp"),
        "health/checks/fcs has its TCP check",
        &fcs_checks,
    )?;
    let node_checks = call!(server, "GET", "/v1/health/node/fcs00", "", 200);
    judge(
        any_with(&node_checks, "CheckID", "serfHealth"),
        "health/node/fcs00 has serfHealth",
        &node_checks,
    )?;
    let any = call!(server, "GET", "/v1/health/state/any", "", 200);
    judge(array_len(&any) >= 2, "health/state/any", &any)?;
    call!(server, "GET", "/v1/health/state/critical", "", 200);
    call!(server, "GET", "/v1/health/state/nonsense", "", 400);

    // A server's own view: its agent/self carries Raft's state, and its
    // metrics gauge the catalog it holds.
    let server_self = call!(server, "GET", "/v1/agent/self", "", 200);
    judge(
        server_self["Config"]["Server"] == true
            && server_self["Stats"]["raft"]["term"]
                .as_str()
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|t| t >= 1),
        "a server's agent/self has its Raft term",
        &server_self,
    )?;
    let server_metrics = call!(server, "GET", "/v1/agent/metrics", "", 200);
    judge(
        server_metrics["Gauges"].as_array().is_some_and(|g| {
            g.iter().any(|g| {
                g["Name"] == "consul.catalog.nodes" && g["Value"].as_f64().is_some_and(|v| v >= 5.0)
            })
        }),
        "a server's metrics count the five nodes in the catalog",
        &server_metrics,
    )?;
    // Client agents find servers through -retry-join only.
    call!(agent, "PUT", "/v1/agent/join/10.0.0.99:8300", "", 400);

    // Status and operator.
    let leader = call!(server, "GET", "/v1/status/leader", "", 200);
    judge(
        leader.as_str().is_some_and(|l| l.contains(':')),
        "status/leader",
        &leader,
    )?;
    let peers = call!(server, "GET", "/v1/status/peers", "", 200);
    judge(
        array_len(&peers) == 3,
        "status/peers has three servers",
        &peers,
    )?;
    let raft = call!(server, "GET", "/v1/operator/raft/configuration", "", 200);
    let servers = raft["Servers"].as_array().cloned().unwrap_or_default();
    judge(
        servers.len() == 3 && servers.iter().filter(|s| s["Leader"] == true).count() == 1,
        "operator/raft/configuration: three servers, at most one leader",
        &raft,
    )?;
    let autopilot = call!(
        server,
        "GET",
        "/v1/operator/autopilot/configuration",
        "",
        200
    );
    judge(
        autopilot.get("CleanupDeadServers").is_some(),
        "operator/autopilot/configuration",
        &autopilot,
    )?;
    // Fixed by design (dead servers are never removed automatically): a
    // change is refused with the reason.
    let fixed = call!(
        server,
        "PUT",
        "/v1/operator/autopilot/configuration",
        &autopilot.to_string(),
        400
    );
    judge(
        fixed.as_str().is_some_and(|t| t.contains("fixed")),
        "an autopilot change is refused with its reason",
        &fixed,
    )?;
    let ap_health = call!(server, "GET", "/v1/operator/autopilot/health", "", 200);
    judge(
        array_len(&ap_health["Servers"]) == 3,
        "operator/autopilot/health lists three servers",
        &ap_health,
    )?;

    // Sessions and transactions.
    let created = call!(
        server,
        "PUT",
        "/v1/session/create",
        r#"{"Name":"tour","TTL":"60s","Behavior":"delete"}"#,
        200
    );
    let id = created["ID"].as_str().unwrap_or_default().to_owned();
    judge(!id.is_empty(), "session/create returns an ID", &created)?;
    let info = call!(server, "GET", &format!("/v1/session/info/{id}"), "", 200);
    judge(any_with(&info, "ID", &id), "session/info finds it", &info)?;
    let list = call!(server, "GET", "/v1/session/list", "", 200);
    judge(any_with(&list, "ID", &id), "session/list has it", &list)?;
    let renewed = call!(server, "PUT", &format!("/v1/session/renew/{id}"), "", 200);
    judge(
        any_with(&renewed, "ID", &id),
        "session/renew returns it",
        &renewed,
    )?;
    let acquired = call!(
        server,
        "PUT",
        &format!("/v1/kv/tour/lock?acquire={id}"),
        "held",
        200
    );
    judge(
        acquired == true,
        "a lock acquired with the session",
        &acquired,
    )?;
    // Consul answers an invalid session 500, with its reason.
    let invalid = call!(
        server,
        "PUT",
        "/v1/session/create",
        r#"{"TTL":"forever"}"#,
        500
    );
    judge(
        invalid.as_str().is_some_and(|t| t.contains("invalid")),
        "an invalid session TTL is refused with its reason",
        &invalid,
    )?;
    call!(server, "PUT", &format!("/v1/session/destroy/{id}"), "", 200);
    let info = call!(server, "GET", &format!("/v1/session/info/{id}"), "", 200);
    judge(is_empty_array(&info), "a destroyed session is gone", &info)?;
    call!(server, "GET", "/v1/kv/tour/lock", "", 404);

    let txn = call!(
        server,
        "PUT",
        "/v1/txn",
        r#"[{"KV":{"Verb":"set","Key":"tour/a","Value":"YQ=="}},{"KV":{"Verb":"get","Key":"tour/a"}}]"#,
        200
    );
    judge(
        array_len(&txn["Results"]) == 2 && txn["Results"][1]["KV"]["Value"] == "YQ==",
        "txn: set then get in one transaction",
        &txn,
    )?;
    let refused = call!(
        server,
        "PUT",
        "/v1/txn",
        r#"[{"KV":{"Verb":"cas","Key":"tour/a","Value":"Yg==","Index":1}},{"KV":{"Verb":"set","Key":"tour/b","Value":"Yg=="}}]"#,
        409
    );
    judge(
        array_len(&refused["Errors"]) >= 1,
        "txn: a failed CAS reports its error",
        &refused,
    )?;
    call!(server, "GET", "/v1/kv/tour/b", "", 404);
    call!(server, "PUT", "/v1/txn", r#"{"KV":1}"#, 400);
    Ok(calls)
}
