//! Health checks the agent runs: TCP, HTTP, TTL, and scripts when enabled.
//!
//! Each check with an interval runs in its own task, reporting every
//! result to the agent's local state ([`super::local::LocalAgent::check_result`]);
//! anti-entropy decides what reaches the catalog and when. A TTL check
//! has no task of its own: the local state turns it critical when its TTL
//! passes without an update (see `LocalAgent::expire_ttls`).
//!
//! Results follow Consul: a TCP check passes when a connection opens; an
//! HTTP check passes on 2xx, warns on 429, and is critical otherwise; a
//! script passes on exit 0, warns on 1, and is critical on anything else.
//! Output is cut to [`MAX_OUTPUT_BYTES`] (Consul's default).

use std::sync::Weak;
use std::time::Duration;

use mesh_core::state::catalog::CheckStatus;
use serde::{Deserialize, Serialize};

use super::local::LocalAgent;
use crate::clock;
use crate::http_client::HttpClient;

/// Longest output kept per check (Consul's `check_output_max_size`).
pub const MAX_OUTPUT_BYTES: usize = 4 * 1024;
/// Default check timeout (Consul's).
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// How a check finds its status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    /// Set through `/v1/agent/check/pass|warn|fail|update`; critical if not
    /// updated within `ttl_ms`.
    Ttl {
        /// Time to live of each update.
        ttl_ms: u64,
    },
    /// A TCP connection to `addr`.
    Tcp {
        /// host:port.
        addr: String,
    },
    /// An HTTP request.
    Http {
        /// The URL (http:// only).
        url: String,
        /// The method (default GET).
        method: String,
    },
    /// A command (only with `enable_script_checks`).
    Script {
        /// Program and arguments.
        args: Vec<String>,
    },
    /// Set only by the agent itself (maintenance mode) or by hand.
    Manual,
}

/// A check as the agent runs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    /// How it finds its status.
    pub probe: Probe,
    /// Period between runs (ignored for TTL and manual checks).
    pub interval_ms: u64,
    /// Longest run.
    pub timeout_ms: u64,
    /// Remove the check's service after it has been critical this long.
    pub deregister_critical_after_ms: Option<u64>,
}

impl CheckSpec {
    /// Whether the check runs periodically.
    pub fn is_periodic(&self) -> bool {
        matches!(
            self.probe,
            Probe::Tcp { .. } | Probe::Http { .. } | Probe::Script { .. }
        )
    }

    /// The catalog's `Type` of the check.
    pub fn type_name(&self) -> &'static str {
        match self.probe {
            Probe::Ttl { .. } => "ttl",
            Probe::Tcp { .. } => "tcp",
            Probe::Http { .. } => "http",
            Probe::Script { .. } => "script",
            Probe::Manual => "",
        }
    }
}

/// Runs `spec` every interval until the agent is gone or the check was
/// replaced (its generation moved on).
pub(super) async fn run_periodic(
    agent: Weak<LocalAgent>,
    check_id: String,
    generation: u64,
    spec: CheckSpec,
) {
    let interval = Duration::from_millis(spec.interval_ms.max(100));
    // The first run is immediate (Consul staggers it randomly within the
    // interval): a new registration learns its status at once.
    let mut start = FastStart::default();
    loop {
        let (status, output) = probe(&spec).await;
        let Some(agent) = agent.upgrade() else { return };
        if !agent.check_result(&check_id, generation, status, &output) {
            return;
        }
        drop(agent);
        clock::sleep(start.next_wait(interval, status)).await;
    }
}

/// Until a check passes for the first time, it runs again after 1 s, 2 s,
/// 4 s, ... (never later than its interval): a service registered just
/// before it listens (a sidecar and its "Connect Sidecar Listening" check,
/// every 10 s) is found healthy within about a second of listening instead
/// of an interval later. After the first pass, the interval rules.
#[derive(Debug, Default)]
struct FastStart {
    passed_once: bool,
    failures: u32,
}

impl FastStart {
    fn next_wait(&mut self, interval: Duration, status: CheckStatus) -> Duration {
        if status == CheckStatus::Passing {
            self.passed_once = true;
        }
        if self.passed_once {
            return interval;
        }
        let backoff = Duration::from_secs(1) * 2u32.saturating_pow(self.failures.min(16));
        self.failures += 1;
        backoff.min(interval)
    }
}

/// One run of a probe.
pub async fn probe(spec: &CheckSpec) -> (CheckStatus, String) {
    let timeout = Duration::from_millis(if spec.timeout_ms == 0 {
        DEFAULT_TIMEOUT_MS
    } else {
        spec.timeout_ms
    });
    let (status, mut output) = match &spec.probe {
        Probe::Tcp { addr } => {
            match clock::timeout(timeout, tokio::net::TcpStream::connect(addr.as_str())).await {
                Ok(Ok(_)) => (CheckStatus::Passing, format!("TCP connect {addr}: Success")),
                Ok(Err(e)) => (CheckStatus::Critical, format!("dial tcp {addr}: {e}")),
                Err(_) => (
                    CheckStatus::Critical,
                    format!("dial tcp {addr}: i/o timeout after {timeout:?}"),
                ),
            }
        }
        Probe::Http { url, method } => http_probe(url, method, timeout).await,
        Probe::Script { args } => script_probe(args, timeout).await,
        Probe::Ttl { .. } | Probe::Manual => return (CheckStatus::Critical, String::new()),
    };
    truncate(&mut output);
    (status, output)
}

async fn http_probe(url: &str, method: &str, timeout: Duration) -> (CheckStatus, String) {
    let Some(rest) = url.strip_prefix("http://") else {
        return (
            CheckStatus::Critical,
            format!("{url}: only http:// URLs are supported by this agent's HTTP checks"),
        );
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let mut client = HttpClient::new(host, timeout);
    let method = if method.is_empty() { "GET" } else { method };
    match client.request(method, path, Vec::new()).await {
        Ok(resp) => {
            let status = match resp.status {
                200..=299 => CheckStatus::Passing,
                429 => CheckStatus::Warning,
                _ => CheckStatus::Critical,
            };
            let body = resp.text();
            (
                status,
                format!("HTTP {method} {url}: {} Output: {body}", resp.status),
            )
        }
        Err(e) => (CheckStatus::Critical, format!("HTTP {method} {url}: {e}")),
    }
}

#[cfg(not(madsim))]
async fn script_probe(args: &[String], timeout: Duration) -> (CheckStatus, String) {
    let Some((program, rest)) = args.split_first() else {
        return (
            CheckStatus::Critical,
            "script check without a program".into(),
        );
    };
    let child = tokio::process::Command::new(program)
        .args(rest)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, child).await {
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let status = match out.status.code() {
                Some(0) => CheckStatus::Passing,
                Some(1) => CheckStatus::Warning,
                _ => CheckStatus::Critical,
            };
            (status, text)
        }
        Ok(Err(e)) => (CheckStatus::Critical, format!("cannot run {program}: {e}")),
        Err(_) => (
            CheckStatus::Critical,
            format!("Timed out ({timeout:?}) running check"),
        ),
    }
}

/// The simulator has no processes.
#[cfg(madsim)]
async fn script_probe(_args: &[String], _timeout: Duration) -> (CheckStatus, String) {
    (
        CheckStatus::Critical,
        "script checks do not run in the simulator".into(),
    )
}

/// Cuts `output` to [`MAX_OUTPUT_BYTES`] on a character boundary.
pub(super) fn truncate(output: &mut String) {
    if output.len() > MAX_OUTPUT_BYTES {
        let mut cut = MAX_OUTPUT_BYTES;
        while !output.is_char_boundary(cut) {
            cut -= 1;
        }
        output.truncate(cut);
        output.push_str(" ... (output truncated)");
    }
}

impl CheckSpec {
    /// How the agent runs a check as written (`kind` has validated it).
    pub fn from_definition(
        def: &mesh_core::definitions::CheckDefinition,
    ) -> Result<CheckSpec, mesh_core::definitions::DefinitionError> {
        use mesh_core::definitions::CheckKind;
        let probe = match def.kind()? {
            CheckKind::Ttl => Probe::Ttl {
                ttl_ms: def.ttl_ms.unwrap_or(0),
            },
            CheckKind::Http => Probe::Http {
                url: def.http.clone().unwrap_or_default(),
                method: def.method.clone().unwrap_or_default(),
            },
            CheckKind::Tcp => Probe::Tcp {
                addr: def.tcp.clone().unwrap_or_default(),
            },
            CheckKind::Script => Probe::Script {
                args: def.args.clone(),
            },
        };
        Ok(CheckSpec {
            probe,
            interval_ms: def.interval_ms.unwrap_or(0),
            timeout_ms: def.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
            deregister_critical_after_ms: def.deregister_critical_service_after_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_retry_fast_until_they_first_pass() {
        let ten = Duration::from_secs(10);
        let mut f = FastStart::default();
        let waits: Vec<u64> = [CheckStatus::Critical; 5]
            .iter()
            .map(|s| f.next_wait(ten, *s).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 10]);
        assert_eq!(f.next_wait(ten, CheckStatus::Passing), ten);
        assert_eq!(
            f.next_wait(ten, CheckStatus::Critical),
            ten,
            "the interval rules after a pass"
        );
        let mut short = FastStart::default();
        assert_eq!(
            short
                .next_wait(Duration::from_millis(500), CheckStatus::Critical)
                .as_millis(),
            500
        );
    }
}
