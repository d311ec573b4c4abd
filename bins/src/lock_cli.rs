//! `mesh lock [options] PREFIX CHILD...`: runs CHILD while holding a lock
//! (or, with `-n N`, one of N semaphore slots) under PREFIX, as
//! `consul lock` does, with the same keys, flags values and session
//! settings, so `mesh lock` and `consul lock` (and the Go api's Lock and
//! Semaphore) contend for the same locks.
//!
//! - Mutex: key `PREFIX/.lock`, acquired with a session (TTL 15 s, the
//!   node's `serfHealth`, default lock delay) and flags
//!   `0x2ddccbc058a50c18`.
//! - Semaphore: every contender acquires `PREFIX/<session>` with a
//!   delete-behaviour session; the slots are the `Holders` of the JSON in
//!   `PREFIX/.lock` (`{"Limit":N,"Holders":{"<session>":true}}`), changed
//!   only by check-and-set, with flags `0xe0f69a2baa414de0`. A holder whose
//!   contender key is gone (its session died) loses its slot.
//!
//! The session is renewed every TTL/2; the lock is watched with blocking
//! consistent reads. When it is lost (the key changes hands, the session
//! expires), the child gets SIGTERM, then SIGKILL after 5 s. On exit the
//! lock is released, the session destroyed and an unused lock key deleted.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use mesh_net::http_client::HttpResponse;
use serde_json::{json, Value};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cli::{agent, encode_path, parse};
use mesh_bins::flags::{Flags, Kind, Spec};

const USAGE: &str = "Usage: mesh lock [options] PREFIX CHILD...

  Runs CHILD while holding the lock PREFIX/.lock (or, with -n N, one of N
  slots), as consul lock does. CHILD gets CONSUL_LOCK_HELD=true; if the
  lock is lost, CHILD gets SIGTERM, then SIGKILL after 5 s.";

const SPECS: &[Spec] = &[
    (
        "n",
        Kind::Value,
        "Number of lock holders (semaphore). Default 1.",
    ),
    (
        "name",
        Kind::Value,
        "Name of the session. Default: derived from the command and prefix.",
    ),
    ("pass-stdin", Kind::Bool, "Pass stdin to the child process."),
    (
        "shell",
        Kind::Bool,
        "Run the child through $SHELL -c (default true).",
    ),
    (
        "timeout",
        Kind::Value,
        "Give up acquiring after this long (e.g. 10s). Default: wait forever.",
    ),
    ("try", Kind::Value, "Deprecated alias of -timeout."),
    (
        "monitor-retry",
        Kind::Value,
        "Retries of a failed lock watch before the lock counts as lost. Default 3.",
    ),
    (
        "child-exit-code",
        Kind::Bool,
        "Exit 2 if the child exits with an error.",
    ),
    ("verbose", Kind::Bool, "Say what happens."),
];

/// The mutex key's flags (`api.LockFlagValue`).
const LOCK_FLAG: u64 = 0x2ddc_cbc0_58a5_0c18;
/// The semaphore keys' flags (`api.SemaphoreFlagValue`).
const SEMAPHORE_FLAG: u64 = 0xe0f6_9a2b_aa41_4de0;
const SESSION_TTL: Duration = Duration::from_secs(15);
/// How long to wait after a refused acquire of a free key (its lock
/// delay) before trying again (`api.DefaultLockRetryTime`).
const RETRY_AFTER_DELAY: Duration = Duration::from_secs(5);
/// Blocking reads wait at most this long.
const BLOCK: &str = "15000ms";

/// `mesh lock ...`; the process exit code.
pub fn lock(args: &[String]) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Parses the flags before the first positional argument only: the
/// child's own flags (`sh -c ...`) are its business.
fn split_flags(args: &[String]) -> Result<(Flags, Vec<String>), String> {
    let specs: Vec<Spec> = crate::cli::HTTP_FLAGS
        .iter()
        .chain(SPECS)
        .copied()
        .collect();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--" {
            break;
        }
        let Some(name) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            break;
        };
        i += 1;
        let value_follows =
            !name.contains('=') && specs.iter().any(|(n, k, _)| *n == name && *k != Kind::Bool);
        if value_follows {
            i += 1;
        }
    }
    let i = i.min(args.len());
    let flags = parse(&args[..i], SPECS, USAGE)?;
    let rest = args[i..]
        .iter()
        .skip_while(|a| *a == "--")
        .cloned()
        .collect();
    Ok((flags, rest))
}

struct Options {
    prefix: String,
    child: Vec<String>,
    limit: usize,
    name: String,
    shell: bool,
    pass_stdin: bool,
    timeout: Option<Duration>,
    monitor_retry: u32,
    child_exit_code: bool,
    verbose: bool,
}

fn options(args: &[String]) -> Result<(Flags, Options), String> {
    let (flags, rest) = split_flags(args)?;
    let Some((prefix, child)) = rest.split_first() else {
        return Err(format!("Key prefix must be specified\n\n{USAGE}"));
    };
    if child.is_empty() {
        return Err(format!("Command must be specified\n\n{USAGE}"));
    }
    let limit: i64 = flags.number("n")?.unwrap_or(1);
    if limit <= 0 {
        return Err("Lock holder limit must be positive".into());
    }
    let timeout = match flags.get("timeout").or_else(|| flags.get("try")) {
        None => None,
        Some(t) => {
            let ns = mesh_core::definitions::parse_go_duration(t)
                .map_err(|e| format!("invalid value {t:?} for flag -timeout: {e}"))?;
            if ns < 0 {
                return Err("Timeout must be positive".into());
            }
            (ns > 0).then(|| Duration::from_nanos(ns as u64))
        }
    };
    let monitor_retry: i64 = flags.number("monitor-retry")?.unwrap_or(3);
    if monitor_retry < 0 {
        return Err("Number for 'monitor-retry' must be >= 0".into());
    }
    // As consul lock: one leading `/` dropped, then Go's `path.Clean`
    // (so `svc/` and `svc` name the same lock).
    let prefix = crate::cli::go_path_clean(prefix.strip_prefix('/').unwrap_or(prefix));
    let name = flags
        .get("name")
        .map(str::to_string)
        .unwrap_or_else(|| format!("Consul lock for '{}' at '{prefix}'", child.join(" ")));
    let shell = flags.get("shell") != Some("false");
    let opts = Options {
        prefix,
        child: child.to_vec(),
        limit: limit as usize,
        name,
        shell,
        pass_stdin: flags.bool("pass-stdin"),
        timeout,
        monitor_retry: monitor_retry as u32,
        child_exit_code: flags.bool("child-exit-code"),
        verbose: flags.bool("verbose"),
    };
    Ok((flags, opts))
}

fn run(args: &[String]) -> Result<i32, String> {
    let (flags, opts) = options(args)?;
    let endpoint = agent(&flags)?;
    crate::cli::process_runtime()?.block_on(async move {
        let agent = Agent { endpoint };
        // Watched from the start: a signal while waiting for the lock
        // gives the session (and any slot) back instead of leaving it to
        // expire.
        let mut terminate = signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut interrupt = signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut lock = Holder::create(&agent, &opts).await?;
        let acquired = tokio::select! {
            biased;
            _ = terminate.recv() => None,
            _ = interrupt.recv() => None,
            a = lock.wait_for_lock(&agent, &opts) => Some(a),
        };
        match acquired {
            Some(Ok(true)) => {}
            Some(Ok(false)) | None => {
                let _ = lock.release(&agent, &opts).await;
                return Err("Shutdown triggered or timeout during lock acquisition".into());
            }
            Some(Err(e)) => {
                let _ = lock.release(&agent, &opts).await;
                return Err(format!("Lock acquisition failed: {e}"));
            }
        }
        if opts.verbose {
            eprintln!("Lock acquisition successful (session {})", lock.session);
        }
        let status = lock
            .run_child(&agent, &opts, &mut terminate, &mut interrupt)
            .await;
        lock.release(&agent, &opts).await?;
        let status = status?;
        if opts.child_exit_code && !status {
            return Ok(2);
        }
        Ok(0)
    })
}

/// The local agent's HTTP API.
struct Agent {
    endpoint: crate::cli::AgentEndpoint,
}

impl Agent {
    async fn call(&self, method: &str, path: &str, body: Vec<u8>) -> Result<HttpResponse, String> {
        // A blocking read waits up to 15 s; give it room.
        self.endpoint
            .client(Duration::from_secs(30))
            .request(method, path, body)
            .await
            .map_err(|e| e.to_string())
    }

    async fn ok(&self, method: &str, path: &str, body: Vec<u8>) -> Result<HttpResponse, String> {
        let r = self.call(method, path, body).await?;
        if r.status == 200 {
            Ok(r)
        } else {
            Err(format!(
                "{method} {path}: Unexpected response code: {} ({})",
                r.status,
                r.text().trim()
            ))
        }
    }

    async fn put_bool(&self, path: &str, body: Vec<u8>) -> Result<bool, String> {
        Ok(self.ok("PUT", path, body).await?.text().trim() == "true")
    }

    /// `GET path` as KV entries (404: none) and the answer's index.
    async fn entries(&self, path: &str) -> Result<(Vec<Value>, u64), String> {
        let r = self.call("GET", path, Vec::new()).await?;
        let index = r
            .header("X-Consul-Index")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        match r.status {
            404 => Ok((Vec::new(), index)),
            200 => {
                let v: Value = serde_json::from_slice(&r.body)
                    .map_err(|e| format!("agent sent malformed JSON: {e}"))?;
                Ok((v.as_array().cloned().unwrap_or_default(), index))
            }
            s => Err(format!(
                "GET {path}: Unexpected response code: {s} ({})",
                r.text().trim()
            )),
        }
    }
}

/// A held lock or slot, its session kept alive in the background.
struct Holder {
    session: String,
    /// Becomes true when the session is gone.
    session_lost: watch::Receiver<bool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Holder {
    /// Creates the session and starts renewing it.
    async fn create(agent: &Agent, opts: &Options) -> Result<Holder, String> {
        let mut body = json!({"Name": opts.name, "TTL": format!("{}s", SESSION_TTL.as_secs())});
        if opts.limit > 1 {
            body["Behavior"] = json!("delete");
        }
        let sent = Instant::now();
        let r = agent
            .ok("PUT", "/v1/session/create", body.to_string().into_bytes())
            .await
            .map_err(|e| format!("Lock setup failed: {e}"))?;
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        let session = v["ID"]
            .as_str()
            .ok_or("Lock setup failed: the agent returned no session ID")?
            .to_string();
        let (lost_tx, session_lost) = watch::channel(false);
        let renewer = tokio::spawn(renew(
            agent.endpoint.clone(),
            session.clone(),
            sent,
            lost_tx,
        ));
        Ok(Holder {
            session,
            session_lost,
            renewer,
        })
    }

    /// Waits for the lock or a slot: true once held, false when `-timeout`
    /// ran out.
    async fn wait_for_lock(&self, agent: &Agent, opts: &Options) -> Result<bool, String> {
        let deadline = opts.timeout.map(|t| Instant::now() + t);
        let attempt = async {
            if opts.limit == 1 {
                self.acquire_mutex(agent, opts).await
            } else {
                self.acquire_slot(agent, opts).await
            }
        };
        match deadline {
            Some(d) => match tokio::time::timeout_at(d, attempt).await {
                Ok(r) => r.map(|()| true),
                Err(_) => Ok(false),
            },
            None => attempt.await.map(|()| true),
        }
    }

    fn key(opts: &Options) -> String {
        crate::cli::go_path_join(&opts.prefix, ".lock")
    }

    async fn acquire_mutex(&self, agent: &Agent, opts: &Options) -> Result<(), String> {
        let key = encode_path(&Self::key(opts));
        let mut index = 0;
        loop {
            let (entries, at) = agent
                .entries(&format!("/v1/kv/{key}?index={index}&wait={BLOCK}"))
                .await?;
            if let Some(e) = entries.first() {
                if e["Flags"].as_u64() != Some(LOCK_FLAG) {
                    return Err("Existing key does not match lock use".into());
                }
                if e["Session"].as_str().is_some_and(|s| s != self.session) {
                    index = at;
                    continue;
                }
            }
            let path = format!("/v1/kv/{key}?acquire={}&flags={LOCK_FLAG}", self.session);
            if agent.put_bool(&path, Vec::new()).await? {
                return Ok(());
            }
            let (entries, at) = agent.entries(&format!("/v1/kv/{key}")).await?;
            match entries.first().and_then(|e| e["Session"].as_str()) {
                Some(_) => index = at,
                // Free but refused: its lock delay.
                None => tokio::time::sleep(RETRY_AFTER_DELAY).await,
            }
        }
    }

    fn contender_key(&self, opts: &Options) -> String {
        crate::cli::go_path_join(&opts.prefix, &self.session)
    }

    async fn acquire_slot(&self, agent: &Agent, opts: &Options) -> Result<(), String> {
        let contender = encode_path(&self.contender_key(opts));
        let path = format!(
            "/v1/kv/{contender}?acquire={}&flags={SEMAPHORE_FLAG}",
            self.session
        );
        if !agent.put_bool(&path, Vec::new()).await? {
            return Err("failed to make contender entry".into());
        }
        let prefix = encode_path(&format!("{}/", opts.prefix));
        let mut index = 0;
        loop {
            let (entries, at) = agent
                .entries(&format!(
                    "/v1/kv/{prefix}?recurse&index={index}&wait={BLOCK}"
                ))
                .await?;
            let (mut slots, modify) = Slots::read(&entries, &opts.prefix, opts.limit)?;
            slots.prune(&entries, &opts.prefix);
            if slots.holders.contains_key(&self.session) {
                return Ok(());
            }
            if slots.holders.len() >= opts.limit {
                index = at;
                continue;
            }
            slots.holders.insert(self.session.clone(), true);
            if slots.write(agent, &opts.prefix, modify).await? {
                return Ok(());
            }
        }
    }

    /// Runs the child until it exits (true: success) or the lock is lost
    /// (the child is stopped; true).
    async fn run_child(
        &mut self,
        agent: &Agent,
        opts: &Options,
        terminate: &mut tokio::signal::unix::Signal,
        interrupt: &mut tokio::signal::unix::Signal,
    ) -> Result<bool, String> {
        let mut cmd = if opts.shell {
            let shell = std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into());
            let mut c = Command::new(shell);
            c.arg("-c").arg(opts.child.join(" "));
            c
        } else {
            let mut c = Command::new(&opts.child[0]);
            c.args(&opts.child[1..]);
            c
        };
        cmd.env("CONSUL_LOCK_HELD", "true");
        // Its own process group, so stopping it stops everything it
        // started (a shell's pipeline, a script's children).
        cmd.process_group(0);
        if !opts.pass_stdin {
            cmd.stdin(Stdio::null());
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("Error starting handler: {e}"))?;
        let lost = self.watch(agent, opts);
        tokio::pin!(lost);
        let why = tokio::select! {
            biased;
            status = child.wait() => {
                let status = status.map_err(|e| e.to_string())?;
                if opts.verbose {
                    eprintln!("Child exited: {status}");
                }
                return Ok(status.success());
            }
            e = &mut lost => e,
            _ = terminate.recv() => "terminated".to_string(),
            _ = interrupt.recv() => "interrupted".to_string(),
        };
        eprintln!("Lock lost or shutdown ({why}): stopping the child");
        stop(&mut child).await;
        Ok(true)
    }

    /// Resolves (with why) once the lock or slot is no longer ours.
    async fn watch(&self, agent: &Agent, opts: &Options) -> String {
        let mut session_lost = self.session_lost.clone();
        let mut index = 0;
        let mut failures = 0;
        loop {
            let read = async {
                if opts.limit == 1 {
                    let key = encode_path(&Self::key(opts));
                    let path = format!("/v1/kv/{key}?consistent&index={index}&wait={BLOCK}");
                    let (entries, at) = agent.entries(&path).await?;
                    let ours = entries
                        .first()
                        .is_some_and(|e| e["Session"].as_str() == Some(&self.session));
                    Ok::<_, String>((ours, at))
                } else {
                    let prefix = encode_path(&format!("{}/", opts.prefix));
                    let path =
                        format!("/v1/kv/{prefix}?recurse&consistent&index={index}&wait={BLOCK}");
                    let (entries, at) = agent.entries(&path).await?;
                    let (mut slots, _) = Slots::read(&entries, &opts.prefix, opts.limit)?;
                    slots.prune(&entries, &opts.prefix);
                    Ok((slots.holders.contains_key(&self.session), at))
                }
            };
            let result = tokio::select! {
                biased;
                _ = session_lost.wait_for(|lost| *lost) => return "the session expired".into(),
                r = read => r,
            };
            match result {
                Ok((true, at)) => {
                    failures = 0;
                    index = at;
                }
                Ok((false, _)) => return "the lock changed hands".into(),
                Err(e) => {
                    failures += 1;
                    if failures > opts.monitor_retry {
                        return format!("cannot watch the lock: {e}");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Gives the lock or slot back, destroys the session and deletes a
    /// lock key nobody uses.
    async fn release(&self, agent: &Agent, opts: &Options) -> Result<(), String> {
        if opts.limit == 1 {
            let key = encode_path(&Self::key(opts));
            let path = format!("/v1/kv/{key}?release={}&flags={LOCK_FLAG}", self.session);
            agent
                .put_bool(&path, Vec::new())
                .await
                .map_err(|e| format!("Lock release failed: {e}"))?;
            self.destroy(agent).await;
            // Cleanup: delete the key if nobody holds it (a CAS, so a
            // new holder's lock survives).
            let (entries, _) = agent.entries(&format!("/v1/kv/{key}")).await?;
            if let Some(e) = entries.first() {
                if e["Session"].is_null() {
                    let index = e["ModifyIndex"].as_u64().unwrap_or(0);
                    let _ = agent
                        .call("DELETE", &format!("/v1/kv/{key}?cas={index}"), Vec::new())
                        .await;
                }
            }
            return Ok(());
        }
        let prefix = encode_path(&format!("{}/", opts.prefix));
        for _ in 0..10 {
            let (entries, _) = agent.entries(&format!("/v1/kv/{prefix}?recurse")).await?;
            let (mut slots, modify) = Slots::read(&entries, &opts.prefix, opts.limit)?;
            if slots.holders.remove(&self.session).is_none()
                || slots.write(agent, &opts.prefix, modify).await?
            {
                break;
            }
        }
        let contender = encode_path(&self.contender_key(opts));
        let _ = agent
            .call("DELETE", &format!("/v1/kv/{contender}"), Vec::new())
            .await;
        self.destroy(agent).await;
        let (entries, _) = agent.entries(&format!("/v1/kv/{prefix}?recurse")).await?;
        let (mut slots, modify) = Slots::read(&entries, &opts.prefix, opts.limit)?;
        slots.prune(&entries, &opts.prefix);
        if slots.holders.is_empty() && modify > 0 {
            let lock = encode_path(&Self::key(opts));
            let _ = agent
                .call("DELETE", &format!("/v1/kv/{lock}?cas={modify}"), Vec::new())
                .await;
        }
        Ok(())
    }

    async fn destroy(&self, agent: &Agent) {
        self.renewer.abort();
        let _ = agent
            .call(
                "PUT",
                &format!("/v1/session/destroy/{}", self.session),
                Vec::new(),
            )
            .await;
    }
}

/// The semaphore's coordination value, `{"Limit":N,"Holders":{..}}`.
struct Slots {
    holders: BTreeMap<String, bool>,
    limit: usize,
}

impl Slots {
    /// The slots in `PREFIX/.lock` among `entries` (empty if absent) and
    /// its modify index (0 if absent).
    fn read(entries: &[Value], prefix: &str, limit: usize) -> Result<(Slots, u64), String> {
        let key = format!("{prefix}/.lock");
        let Some(e) = entries.iter().find(|e| e["Key"] == key.as_str()) else {
            return Ok((
                Slots {
                    holders: BTreeMap::new(),
                    limit,
                },
                0,
            ));
        };
        if e["Flags"].as_u64() != Some(SEMAPHORE_FLAG) {
            return Err("Existing key does not match semaphore use".into());
        }
        let raw = e["Value"].as_str().unwrap_or("");
        let bytes = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(raw)
                .map_err(|e| format!("semaphore lock is not base64: {e}"))?
        };
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("failed to decode semaphore lock: {e}"))?;
        let theirs = v["Limit"].as_u64().unwrap_or(0) as usize;
        if theirs != limit {
            return Err(format!(
                "semaphore limit conflict (lock: {theirs}, local: {limit})"
            ));
        }
        let holders = v["Holders"]
            .as_object()
            .map(|m| m.keys().map(|k| (k.clone(), true)).collect())
            .unwrap_or_default();
        Ok((
            Slots { holders, limit },
            e["ModifyIndex"].as_u64().unwrap_or(0),
        ))
    }

    /// Drops holders whose contender key is gone or not theirs (their
    /// session died).
    fn prune(&mut self, entries: &[Value], prefix: &str) {
        self.holders.retain(|session, _| {
            let key = format!("{prefix}/{session}");
            entries
                .iter()
                .any(|e| e["Key"] == key.as_str() && e["Session"] == session.as_str())
        });
    }

    /// Writes the slots with a CAS on `modify` (0: create); whether it won.
    async fn write(&self, agent: &Agent, prefix: &str, modify: u64) -> Result<bool, String> {
        let body = json!({"Limit": self.limit, "Holders": self.holders}).to_string();
        let key = encode_path(&format!("{prefix}/.lock"));
        agent
            .put_bool(
                &format!("/v1/kv/{key}?cas={modify}&flags={SEMAPHORE_FLAG}"),
                body.into_bytes(),
            )
            .await
    }
}

/// Renews the session every TTL/2 until aborted; flags `lost` once it is
/// gone, or once a TTL has passed since the last successful renewal was
/// *sent* (`created`: when the create was sent), whatever is in flight:
/// the rule that keeps a holder from outliving its session (see
/// `mesh_core::session_ttl`).
async fn renew(
    endpoint: crate::cli::AgentEndpoint,
    session: String,
    created: Instant,
    lost: watch::Sender<bool>,
) {
    const RENEW_TIMEOUT: Duration = Duration::from_secs(5);
    let agent = Agent { endpoint };
    let path = format!("/v1/session/renew/{session}");
    let mut alive_since = created;
    let mut next_try = created + SESSION_TTL / 2;
    loop {
        let deadline = alive_since + SESSION_TTL;
        let attempt = async {
            tokio::time::sleep_until(next_try).await;
            let sent = Instant::now();
            let r = tokio::time::timeout(RENEW_TIMEOUT, agent.call("PUT", &path, Vec::new())).await;
            (sent, r)
        };
        let (sent, r) = tokio::select! {
            biased;
            () = tokio::time::sleep_until(deadline) => {
                let _ = lost.send(true);
                return;
            }
            done = attempt => done,
        };
        match r {
            Ok(Ok(resp)) if resp.status == 200 => {
                alive_since = sent;
                next_try = sent + SESSION_TTL / 2;
            }
            Ok(Ok(resp)) if resp.status == 404 => {
                let _ = lost.send(true);
                return;
            }
            // Try again soon; the deadline decides when to give up.
            _ => next_try = Instant::now() + Duration::from_secs(1),
        }
    }
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal, String> {
    tokio::signal::unix::signal(kind).map_err(|e| format!("cannot watch signals: {e}"))
}

/// SIGTERM to the child's process group, then SIGKILL after 5 s.
async fn stop(child: &mut tokio::process::Child) {
    let group = child.id().map(|pid| format!("-{pid}"));
    let signal_group = |sig: &'static str| {
        let group = group.clone();
        async move {
            if let Some(g) = group {
                let _ = Command::new("kill")
                    .args([sig, "--", &g])
                    .stderr(Stdio::null())
                    .status()
                    .await;
            }
        }
    };
    signal_group("-TERM").await;
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        signal_group("-KILL").await;
        let _ = child.kill().await;
    }
}
