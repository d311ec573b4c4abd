//! `mesh reload`, SIGHUP and `PUT /v1/agent/reload`: the agent reads its
//! configuration again and applies what can change while it runs, as
//! Consul's reload does:
//!
//! - services and checks from the files (added, changed, removed; see
//!   [`super::local::ConfigChanges`]);
//! - the TLS material and verification settings of the RPC port and of the
//!   HTTPS API, for every connection opened afterwards;
//! - the log level (the process's logging belongs to the binary, which
//!   passes a hook).
//!
//! Settings that only a restart can change (addresses, ports, node name,
//! datacenter, server mode, join addresses) are left as they were and
//! named in a warning. The new files are parsed and every TLS file built
//! before anything changes, so a bad file fails the reload with its reason
//! and the agent keeps running on what it had.

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::local::ConfigChanges;
use super::{Agent, AgentConfig, Role};

/// A reload asked through the HTTP API: the outcome (the reason when it
/// failed) goes back on the channel.
pub type ReloadRequest = oneshot::Sender<Result<(), String>>;

/// The settings that differ between `old` and `new` and that only a
/// restart applies.
pub fn needs_restart(old: &AgentConfig, new: &AgentConfig) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut differs = |name: &'static str, changed: bool| {
        if changed {
            out.push(name);
        }
    };
    differs("node_name", old.node_name != new.node_name);
    differs("datacenter", old.datacenter != new.datacenter);
    differs("advertise_addr", old.advertise != new.advertise);
    differs("client_addr/ports.http", old.http_bind != new.http_bind);
    differs("ports.dns", old.dns_bind != new.dns_bind);
    differs(
        "ports.https",
        old.https.as_ref().map(|h| h.bind) != new.https.as_ref().map(|h| h.bind),
    );
    differs(
        "tls (turned on or off)",
        old.rpc_tls.is_some() != new.rpc_tls.is_some(),
    );
    differs(
        "enable_script_checks",
        old.enable_script_checks != new.enable_script_checks,
    );
    differs(
        "acl.default_policy",
        old.default_intention_allow != new.default_intention_allow,
    );
    match (&old.role, &new.role) {
        (Role::Server(a), Role::Server(b)) => {
            differs("bind_addr/ports.server", a.rpc_bind != b.rpc_bind);
            differs("bootstrap/bootstrap_expect", a.bootstrap != b.bootstrap);
            differs("retry_join", a.join != b.join);
            differs(
                "snapshot_threshold",
                a.snapshot_threshold != b.snapshot_threshold,
            );
        }
        (
            Role::Client {
                servers: a,
                auto_encrypt: x,
            },
            Role::Client {
                servers: b,
                auto_encrypt: y,
            },
        ) => {
            differs("retry_join", a != b);
            differs("auto_encrypt", x != y);
        }
        _ => differs("server", true),
    }
    out
}

impl Agent {
    /// Applies `new` (the configuration read again) as far as a running
    /// agent can (see the module's doc); what it did to the services and
    /// checks from the files.
    pub fn reload(&self, new: &AgentConfig) -> ConfigChanges {
        let mut current = self.config.lock().expect("config lock");
        let needs_restart = needs_restart(&current, new);
        if !needs_restart.is_empty() {
            warn!(
                settings = ?needs_restart,
                "reload: these settings changed and take effect only after a restart"
            );
        }
        let changes = self.local.apply_config(&new.services, &new.checks);
        for refused in &changes.refused {
            warn!(definition = %refused, "reload: a definition was refused");
        }
        let mut tls_reloaded = Vec::new();
        if let (Some(now), Some(next)) = (&current.rpc_tls, &new.rpc_tls) {
            now.adopt(next);
            tls_reloaded.push("rpc");
        }
        if let (Some(now), Some(next)) = (&current.https, &new.https) {
            if now.bind == next.bind {
                now.tls.set(next.tls.get());
                tls_reloaded.push("https");
            }
        }
        // What was applied becomes the base of the next comparison; the
        // rest keeps what the agent runs with.
        current.services = new.services.clone();
        current.checks = new.checks.clone();
        info!(%changes, tls = ?tls_reloaded, "configuration reloaded");
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::command::parse;

    fn config(args: &[&str]) -> AgentConfig {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse(&args).expect("flags parse").config
    }

    #[test]
    fn only_settings_a_restart_applies_are_named() {
        let base = config(&["-dev", "-node", "a"]);
        assert_eq!(
            needs_restart(&base, &config(&["-dev", "-node", "a"])),
            Vec::<&str>::new()
        );
        assert_eq!(
            needs_restart(
                &base,
                &config(&[
                    "-dev",
                    "-node",
                    "b",
                    "-http-port",
                    "18500",
                    "-dns-port",
                    "-1"
                ])
            ),
            ["node_name", "client_addr/ports.http", "ports.dns"]
        );
        let client = config(&[
            "-node",
            "a",
            "-data-dir",
            "/tmp/x",
            "-retry-join",
            "127.0.0.1:8300",
        ]);
        assert_eq!(needs_restart(&base, &client), ["server"]);
        let moved = config(&[
            "-node",
            "a",
            "-data-dir",
            "/tmp/x",
            "-retry-join",
            "127.0.0.2:8300",
        ]);
        assert_eq!(needs_restart(&client, &moved), ["retry_join"]);
    }

    #[test]
    fn an_unknown_log_level_is_refused() {
        let args: Vec<String> = ["-dev", "-log-level", "loud"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let err = parse(&args).expect_err("refused").to_string();
        assert!(err.starts_with("Invalid log level: loud."), "{err}");
        let ok: Vec<String> = ["-dev", "-log-level", "ERR"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(parse(&ok).is_ok());
    }
}
