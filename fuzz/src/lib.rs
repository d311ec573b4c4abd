//! The bodies of the fuzz targets, one function per target, each taking
//! the fuzzer's bytes. They panic only when mesh-core breaks a property it
//! promises (never panic on input; never accept a record or frame with a bad
//! checksum; round trips are exact), so a crash is a bug either way.
//!
//! Nothing here needs nightly or libFuzzer: `fuzz_targets/*.rs` wrap these
//! functions for cargo-fuzz, and the same functions can replay a corpus on
//! stable Rust.

use mesh_core::codec::{self, FrameDecoder};
use mesh_core::connect::ca;
use mesh_core::connect::intention::{self, Action, Intention};
use mesh_core::connect::spiffe::SpiffeId;
use mesh_core::definitions::{self, AgentFileConfig};
use mesh_core::filter::Filter;
use mesh_core::record;
use mesh_core::state::{Command, CommandResult, StateMachine, SNAPSHOT_MAGIC};
use mesh_core::wire::{self, Request, Response};

/// A target's body: it takes the fuzzer's bytes and panics on a bug.
pub type Target = fn(&[u8]);

/// Every fuzz target, by name (the names of `fuzz_targets/*.rs`).
pub const TARGETS: &[(&str, Target)] = &[
    ("frame_decode", frame_decode),
    ("wire_decode", wire_decode),
    ("snapshot_restore", snapshot_restore),
    ("record_recovery", record_recovery),
    ("filter_parse", filter_parse),
    ("definitions_decode", definitions_decode),
    ("state_machine_apply", state_machine_apply),
    ("spiffe_parse", spiffe_parse),
    ("intention_decide", intention_decide),
    ("http_api", http_api),
];

/// The frame codec over arbitrary bytes: the direct API on the whole
/// input, then a [`FrameDecoder`] fed the input in chunks whose size the
/// first byte picks. Every frame it yields must be exactly one frame of
/// the input, in order (so no damaged frame is ever accepted), and once
/// it fails it must stay failed.
pub fn frame_decode(data: &[u8]) {
    if let Some(prefix) = data.first_chunk::<{ codec::LEN_PREFIX }>() {
        let _ = codec::decode_len(*prefix);
    }
    let _ = codec::decode_body(data);

    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 64) + 1;
    let mut dec = FrameDecoder::new();
    let mut reencoded = Vec::new();
    let mut error = None;
    'feed: for piece in stream.chunks(chunk) {
        dec.push(piece);
        // Bounded: each frame consumes at least 9 bytes.
        for _ in 0..=stream.len() {
            match dec.next_frame() {
                Ok(Some(payload)) => codec::encode_frame(&payload, &mut reencoded),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    assert!(
        stream.starts_with(&reencoded),
        "the decoder yielded a frame that is not in the input"
    );
    if let Some(e) = error {
        dec.push(stream);
        assert_eq!(
            dec.next_frame(),
            Err(e),
            "a failed decoder must stay failed"
        );
        assert_eq!(dec.buffered(), 0);
    } else {
        assert_eq!(dec.buffered(), stream.len() - reencoded.len());
    }
}

/// RPC message decoding over arbitrary bytes, as a server reads a frame's
/// payload: requests and responses, with JSON values standing in for the
/// runtime's Raft messages. A decoded request without a Raft payload must
/// survive encode and decode unchanged (a Raft payload is left out: JSON
/// floats need not round-trip exactly through `serde_json::Value`).
pub fn wire_decode(data: &[u8]) {
    if let Ok(req) = wire::decode::<Request<serde_json::Value>>(data) {
        if !matches!(req, Request::Raft(_)) {
            let mut framed = Vec::new();
            if wire::encode(&req, &mut framed).is_ok() {
                let payload = codec::decode_body(&framed[codec::LEN_PREFIX..])
                    .expect("a frame we encoded decodes");
                let again: Request<serde_json::Value> =
                    wire::decode(payload).expect("a message we encoded decodes");
                assert_eq!(again, req, "request changed through encode and decode");
            }
        }
    }
    let _ = wire::decode::<Response<serde_json::Value>>(data);
}

/// Snapshot restore over arbitrary bytes, as a server reads them from disk
/// or from the leader. The first byte picks a header to prepend (none,
/// version 3, 2 or 1) so the fuzzer spends its time in the bodies. A
/// snapshot that restores must hold the state machine's invariants, and
/// snapshot and restore again to an equal state with an equal digest.
pub fn snapshot_restore(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = match mode % 4 {
        0 => rest.to_vec(),
        v => [SNAPSHOT_MAGIC.as_slice(), &[4 - v], rest].concat(),
    };
    if let Ok(sm) = StateMachine::restore(&bytes) {
        sm.check_invariants();
        let again = StateMachine::restore(&sm.snapshot()).expect("our own snapshot restores");
        assert_eq!(again, sm, "state changed through snapshot and restore");
        assert_eq!(again.digest(), sm.digest());
    }
}

/// Storage recovery over arbitrary file contents (`record::scan`): the
/// records it keeps are contiguous from offset 0 and each re-encodes to
/// exactly the bytes it came from (so a record with a bad checksum is
/// never accepted and none before the damage is dropped), the length to
/// keep ends at the last of them, and a torn tail accounts for every byte
/// after it.
pub fn record_recovery(data: &[u8]) {
    match record::scan(data) {
        Ok(scan) => {
            let mut end = 0usize;
            for r in &scan.records {
                assert_eq!(r.offset, end as u64, "records must be contiguous from 0");
                let mut bytes = Vec::new();
                record::encode_record(r.kind, r.payload, &mut bytes);
                assert_eq!(
                    &data[end..end + bytes.len()],
                    &bytes[..],
                    "a kept record is not the bytes it came from"
                );
                end += bytes.len();
            }
            assert_eq!(scan.valid_len, end as u64);
            match &scan.torn_tail {
                Some(t) => {
                    assert_eq!(t.offset, scan.valid_len);
                    assert_eq!(t.discarded_bytes, data.len() as u64 - scan.valid_len);
                    assert!(t.discarded_bytes > 0);
                }
                None => assert_eq!(scan.valid_len, data.len() as u64),
            }
        }
        Err(corrupt) => assert!(corrupt.offset < data.len() as u64),
    }
}

/// The row filters are evaluated against in `filter_parse`: a
/// `/v1/health/service` entry with maps, lists, strings, numbers and
/// booleans.
fn filter_row() -> serde_json::Value {
    serde_json::json!({
        "Node": {
            "ID": "", "Node": "fcs00", "Address": "127.0.0.13", "Datacenter": "dc1",
            "TaggedAddresses": {"lan": "127.0.0.13"}, "Meta": {"env": "prod", "some key": ""},
            "CreateIndex": 5, "ModifyIndex": 7
        },
        "Service": {
            "Kind": "", "ID": "fcs", "Service": "fcs", "Tags": ["v1", "primary"],
            "Address": "", "Meta": {"version": "1.2"}, "Port": 8181,
            "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false,
            "CreateIndex": 6, "ModifyIndex": 6
        },
        "Checks": [
            {"Node": "fcs00", "CheckID": "serfHealth", "Name": "Serf Health Status",
             "Status": "passing", "Notes": "", "Output": "", "ServiceID": "",
             "ServiceName": "", "ServiceTags": [], "Type": "", "CreateIndex": 5,
             "ModifyIndex": 5},
            {"Node": "fcs00", "CheckID": "service:fcs", "Name": "fcs tcp",
             "Status": "critical", "Notes": "", "Output": "dial tcp: refused",
             "ServiceID": "fcs", "ServiceName": "fcs", "ServiceTags": ["v1", "primary"],
             "Type": "tcp", "CreateIndex": 6, "ModifyIndex": 9}
        ]
    })
}

/// `?filter=` over arbitrary UTF-8: parse, then evaluate on a fixed row
/// (errors are fine, panics and hangs are not).
pub fn filter_parse(data: &[u8]) {
    let Ok(expr) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(f) = Filter::parse(expr) {
        let _ = f.matches(&filter_row());
    }
}

/// Service definitions and catalog bodies over arbitrary JSON: the body
/// decoders of `PUT /v1/agent/service/register`, `.../check/register`,
/// `/v1/catalog/register` and `/v1/catalog/deregister`, and the JSON agent
/// config file parser. A service that decodes is also converted to its
/// catalog rows, checks and sidecar, as the agent does next.
pub fn definitions_decode(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = AgentFileConfig::parse_json(text);
    }
    let Ok(v) = definitions::parse_body(data) else {
        return;
    };
    if let Ok(s) = definitions::decode_service(&v) {
        let _ = s.to_node_service();
        for c in s.checks() {
            if c.kind().is_ok() {
                let _ = c.to_health_check("fcs00");
            }
        }
        if let Some(sidecar) = s.sidecar() {
            let _ = sidecar.to_node_service();
        }
    }
    if let Ok(c) = definitions::decode_check(&v) {
        if c.kind().is_ok() {
            let _ = c.to_health_check("fcs00");
        }
    }
    let _ = definitions::decode_catalog_register(&v);
    let _ = definitions::decode_catalog_deregister(&v);
}

/// Most commands one input applies: enough for every table to interact,
/// few enough that each input runs in well under a millisecond.
const MAX_COMMANDS: usize = 64;

/// The state machine driven by a sequence of commands, decoded as a
/// server decodes its log entries (JSON, `Vec<Command>`). After each
/// command the state holds its invariants and a batch answers each of its
/// commands; halfway through, a replica is restored from a snapshot and
/// applies the rest too, and at the end the two are equal with equal
/// digests (State Machine Safety across snapshot install), and the final
/// state survives its own snapshot unchanged.
pub fn state_machine_apply(data: &[u8]) {
    let Ok(commands) = serde_json::from_slice::<Vec<Command>>(data) else {
        return;
    };
    let commands = &commands[..commands.len().min(MAX_COMMANDS)];
    let half = commands.len() / 2;
    let mut sm = StateMachine::default();
    let mut replica: Option<StateMachine> = None;
    for (i, cmd) in commands.iter().enumerate() {
        if i == half {
            let restored =
                StateMachine::restore(&sm.snapshot()).expect("our own snapshot restores");
            assert_eq!(restored.digest(), sm.digest(), "restore changed the digest");
            replica = Some(restored);
        }
        // Index 2i + 1: gaps, as blank and membership entries leave them.
        let index = 2 * i as u64 + 1;
        let result = sm.apply(index, cmd);
        sm.check_invariants();
        if let Command::Batch(batch) = cmd {
            match &result {
                CommandResult::Batch(results) => assert_eq!(
                    results.len(),
                    batch.commands().len(),
                    "a batch answers each of its commands"
                ),
                other => panic!("a batch answered {other:?}"),
            }
        }
        if let Some(r) = replica.as_mut() {
            assert_eq!(r.apply(index, cmd), result, "replicas disagree on a result");
        }
    }
    if let Some(r) = replica {
        assert_eq!(r.digest(), sm.digest(), "replicas diverged");
        assert_eq!(r, sm, "replicas diverged");
    }
    let again = StateMachine::restore(&sm.snapshot()).expect("our own snapshot restores");
    assert_eq!(again, sm, "state changed through snapshot and restore");
}

/// What a sidecar believes about a peer: its SPIFFE ID, parsed from the
/// certificate's URI SAN. The first byte picks the input: a URI for
/// `SpiffeId::from_str` (an ID that parses prints back to the same URI and
/// names its own service), or DER for the certificate parser the CA and
/// the agents use on certificates from outside (`ca::cert_info`, wrapped
/// in PEM as the API carries it).
pub fn spiffe_parse(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(uri) = std::str::from_utf8(rest) else {
            return;
        };
        if let Ok(id) = uri.parse::<SpiffeId>() {
            let printed = id.to_string();
            assert_eq!(printed, uri, "a parsed SPIFFE ID prints differently");
            assert_eq!(printed.parse::<SpiffeId>().as_ref(), Ok(&id));
            assert!(id.is_service(&id.trust_domain, &id.service));
        }
    } else {
        use base64::Engine as _;
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(rest)
        );
        if let Ok(info) = ca::cert_info(&pem) {
            for uri in &info.uri_sans {
                let _ = uri.parse::<SpiffeId>();
            }
            let _ = ca::leaf_is_valid_at(&pem, std::time::UNIX_EPOCH);
        }
        let _ = ca::pem_to_der(std::str::from_utf8(rest).unwrap_or_default());
    }
}

/// Intention matching against a reference written from Consul's rules.
/// Each input line is `SOURCE DESTINATION allow|deny` (an intention, if
/// both names are valid) or `SOURCE DESTINATION` (a question); the last
/// line's first byte sets the default. For each question, `decide` must
/// agree with the reference: the matching intentions of the highest
/// precedence (exact 9, `* -> exact` 8, `exact -> *` 6, `* -> *` 5)
/// decide, deny winning a tie; none matching means the default. The
/// match listings must hold exactly the intentions naming the service or
/// the wildcard on their side, in order.
pub fn intention_decide(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let default_allow = text.lines().last().is_some_and(|l| l.starts_with('+'));
    let mut intentions: Vec<Intention> = Vec::new();
    let mut questions: Vec<(&str, &str)> = Vec::new();
    for line in text.lines().take(64) {
        let mut words = line.split(' ');
        let (Some(src), Some(dst)) = (words.next(), words.next()) else {
            continue;
        };
        let action = match words.next() {
            Some("allow") => Action::Allow,
            Some("deny") => Action::Deny,
            _ => {
                questions.push((src, dst));
                continue;
            }
        };
        if intention::validate_name("source", src).is_err()
            || intention::validate_name("destination", dst).is_err()
        {
            continue;
        }
        // One intention per pair, as the table keeps them: the last wins.
        intentions.retain(|i| !(i.source_name == src && i.destination_name == dst));
        intentions.push(Intention::new(src, dst, action));
    }
    for (src, dst) in questions {
        let decision = intention::decide(&intentions, src, dst, default_allow);
        let applies = |i: &&Intention| {
            (i.source_name == "*" || i.source_name == src)
                && (i.destination_name == "*" || i.destination_name == dst)
        };
        let rank = |i: &Intention| match (i.source_name == "*", i.destination_name == "*") {
            (false, false) => 9,
            (true, false) => 8,
            (false, true) => 6,
            (true, true) => 5,
        };
        let top = intentions.iter().filter(applies).map(rank).max();
        let expected = match top {
            None => default_allow,
            Some(p) => !intentions
                .iter()
                .filter(applies)
                .any(|i| rank(i) == p && i.action == Action::Deny),
        };
        assert_eq!(
            decision.allowed, expected,
            "{src} -> {dst} under {intentions:?}"
        );
        assert_eq!(decision.matched.is_some(), top.is_some());
        if let Some(m) = &decision.matched {
            assert_eq!(Some(rank(m)), top, "decided by a lower precedence");
            assert_eq!(m.precedence, rank(m), "precedence differs from Consul's");
        }
        for (name, listed, side) in [
            (dst, intention::match_destination(&intentions, dst), true),
            (src, intention::match_source(&intentions, src), false),
        ] {
            let pick = |i: &Intention| {
                if side {
                    i.destination_name.clone()
                } else {
                    i.source_name.clone()
                }
            };
            let want = intentions
                .iter()
                .filter(|i| pick(i) == "*" || pick(i) == name)
                .count();
            assert_eq!(listed.len(), want, "match listing for {name}");
            assert!(listed.iter().all(|i| pick(i) == "*" || pick(i) == name));
            assert!(
                listed
                    .windows(2)
                    .all(|w| w[0].precedence >= w[1].precedence),
                "match listing out of precedence order"
            );
        }
    }
}

/// Methods `http_api` picks from (its input's first byte).
const METHODS: [&str; 4] = ["GET", "PUT", "POST", "DELETE"];

/// The HTTP API end to end: a request built from the input goes over real
/// TCP on loopback to one `-dev` agent running in this process (started on
/// first use, as `mesh agent -dev` starts it), through hyper, the router,
/// the endpoint's query and body parsing, Raft and the state machine, and
/// back. The input is a method byte, the request target up to the first
/// newline (bytes a URI cannot hold are percent-encoded), and the body.
///
/// Checks: a panic anywhere in the agent aborts the process (libFuzzer's
/// panic hook, or `catch_unwind` in the corpus replay of the caller's
/// thread plus the probe below); every answer is a well-formed HTTP/1.1
/// status line; and an answer slower than half a second (a blocking
/// query, or a wedged agent) is followed by a status probe that must
/// answer, so a hang is a finding.
///
/// Not sent, so one input cannot end the run or reach beyond loopback:
/// paths that make the agent leave or change the Raft membership, and
/// registrations carrying network health checks (HTTP, TCP, gRPC, UDP,
/// H2PING, scripts), whose targets would be dialed.
pub fn http_api(data: &[u8]) {
    let Some((method, target, body)) = http_request_parts(data) else {
        return;
    };
    if ["leave", "raft/peer", "transfer-leader"]
        .iter()
        .any(|p| target.contains(p))
    {
        return;
    }
    if target.contains("register") {
        let lower = String::from_utf8_lossy(body).to_ascii_lowercase();
        if [
            "\"http\"",
            "\"tcp\"",
            "\"grpc\"",
            "\"udp\"",
            "\"h2ping\"",
            "\"args\"",
            "\"scriptargs\"",
        ]
        .iter()
        .any(|k| lower.contains(k))
        {
            return;
        }
    }
    let agent = dev_agent();
    match exchange(
        agent,
        method,
        &target,
        body,
        std::time::Duration::from_millis(500),
    ) {
        Ok(answer) => assert!(
            is_status_line(&answer),
            "{method} {target}: not an HTTP answer: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        ),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            panic!("{method} {target}: the agent is gone: {e}")
        }
        // Slow (a blocking query waits) or cut: the agent must still answer.
        Err(_) => {
            let probe = get(
                agent,
                "/v1/status/leader",
                std::time::Duration::from_secs(10),
            );
            assert!(
                probe.as_deref().is_ok_and(is_status_line),
                "the agent stopped answering after {method} {target}: {probe:?}"
            );
        }
    }
}

/// One request to this process's `-dev` agent (started if need be); its
/// whole answer, or empty if there was none within 10 s.
pub fn ask_dev_agent(method: &str, target: &str, body: &[u8]) -> Vec<u8> {
    exchange(
        dev_agent(),
        method,
        target,
        body,
        std::time::Duration::from_secs(10),
    )
    .unwrap_or_default()
}

/// The request an `http_api` input stands for: method, request target
/// (percent-encoded where a URI needs it) and body.
pub fn http_request_parts(data: &[u8]) -> Option<(&'static str, String, &[u8])> {
    let (&method, rest) = data.split_first()?;
    let method = METHODS[usize::from(method) % METHODS.len()];
    let (target, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    Some((method, request_target(target), body))
}

/// `raw` as a request target hyper accepts: a leading `/`, and every byte
/// outside the URI's visible characters percent-encoded.
fn request_target(raw: &[u8]) -> String {
    let mut t = String::with_capacity(raw.len() + 1);
    if raw.first() != Some(&b'/') {
        t.push('/');
    }
    for &b in raw {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            t.push(char::from(b));
        } else {
            t.push_str(&format!("%{b:02X}"));
        }
    }
    t
}

fn is_status_line(answer: &[u8]) -> bool {
    answer.len() >= 12
        && answer.starts_with(b"HTTP/1.1 ")
        && answer[9..12].iter().all(u8::is_ascii_digit)
}

/// `GET path` on a new connection; the whole answer.
fn get(
    agent: std::net::SocketAddr,
    path: &str,
    timeout: std::time::Duration,
) -> std::io::Result<Vec<u8>> {
    exchange(agent, "GET", path, b"", timeout)
}

/// One request on a new connection; the whole answer (the agent closes
/// the connection after it, as asked).
fn exchange(
    agent: std::net::SocketAddr,
    method: &str,
    target: &str,
    body: &[u8],
    timeout: std::time::Duration,
) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect_timeout(&agent, std::time::Duration::from_secs(2))?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(std::time::Duration::from_secs(2)))?;
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {agent}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(&[head.as_bytes(), body].concat())?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)?;
    Ok(answer)
}

/// The HTTP address of the `-dev` agent of this process, started on the
/// first call (on a thread of its own, with its own runtime) and ready:
/// it leads its one-server cluster and is registered in its catalog.
fn dev_agent() -> std::net::SocketAddr {
    static AGENT: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();
    *AGENT.get_or_init(|| {
        // libFuzzer's `main` is C's, so SIGPIPE still kills the process, as
        // Rust's own `main` (the `mesh` binary's) makes sure it does not:
        // hyper's vectored write to a client that gave up on a blocking
        // query then ended a fuzz run (signal 13) instead of failing one
        // write with EPIPE.
        // (The corpus replay in `cargo test` runs under Rust's `main`.)
        // SAFETY: setting a signal's disposition to SIG_IGN at startup,
        // before any other thread of this process writes to a socket.
        #[cfg(fuzzing)]
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port()
                .to_string()
        };
        let http = free_port();
        let args: Vec<String> = [
            "-dev",
            "-http-port",
            &http,
            "-server-port",
            &free_port(),
            "-dns-port",
            "-1",
        ]
        .map(String::from)
        .to_vec();
        let launch = mesh_net::agent::command::parse(&args).expect("-dev flags parse");
        let reloader = mesh_net::agent::command::Reloader::from_args(args, Box::new(|_| Ok(false)));
        std::thread::Builder::new()
            .name("dev-agent".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("a runtime for the agent");
                let disk = std::sync::Arc::new(mesh_net::disk::MemDisk::new());
                // Never sent: the agent runs until the process ends.
                let (_signals, signals) = tokio::sync::mpsc::channel(1);
                let outcome = rt.block_on(mesh_net::agent::command::run(
                    launch.config,
                    disk,
                    signals,
                    reloader,
                    |_| {},
                ));
                panic!("the -dev agent stopped: {outcome:?}");
            })
            .expect("agent thread");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().expect("address");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let leader = get(addr, "/v1/status/leader", std::time::Duration::from_secs(2));
            // Settled: it leads, and has registered itself with its
            // serfHealth check (sessions need it).
            let led = leader.is_ok_and(|a| a.starts_with(b"HTTP/1.1 200") && !a.ends_with(b"\"\""));
            if led {
                let own = get(
                    addr,
                    "/v1/health/node/dev",
                    std::time::Duration::from_secs(2),
                );
                if own.is_ok_and(|a| String::from_utf8_lossy(&a).contains("serfHealth")) {
                    return addr;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the -dev agent is not settled after 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    })
}
