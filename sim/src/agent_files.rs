//! How the simulator starts every agent, servers and client hosts alike:
//! as `mesh agent` is started on bare metal, with a few flags and a
//! `-config-dir` holding `deploy/tls.json`'s TLS settings with the PEM
//! files beside them (every server with `auto_encrypt.allow_tls`; fcs00
//! asks for its RPC certificate with `auto_encrypt.tls`), and whatever
//! else the host's config says. The
//! production parser reads the files; `mesh reload` (through
//! `PUT /v1/agent/reload`) writes and reads them again.

use std::sync::{Arc, Mutex};

use mesh_core::agent_tls::CertKind;
use mesh_net::agent::command;

/// One agent's flags and configuration files.
#[derive(Clone)]
pub struct AgentFiles {
    /// The node's name (also names its config directory).
    pub name: String,
    /// Command-line flags, before `-config-dir`.
    pub flags: Vec<String>,
    /// The certificate the operator gives this agent.
    pub cert: CertKind,
    /// Serve the HTTPS API with that certificate, open to any caller that
    /// trusts the CA.
    pub https: bool,
    /// `auto_encrypt`: a server signs agent certificates (`allow_tls`); a
    /// client host asks for its RPC certificate (`tls`) instead of being
    /// given one (its HTTPS API keeps the operator's).
    pub auto_encrypt: bool,
    /// `agent.json`, if the host has one.
    pub agent_json: Option<serde_json::Value>,
    /// The operator CA that signs the certificate.
    pub rpc_tls: crate::rpc_tls::SimRpcTls,
    /// Service definitions (JSON, Consul's shape) written as
    /// `services.json`: a test adds one and calls `PUT /v1/agent/reload`.
    pub extra_services: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl AgentFiles {
    /// Writes the files and parses the command line as the binary does.
    /// The files live in a directory of this process only while they are
    /// parsed. Each call signs a new certificate, as an operator renewing
    /// it before `mesh reload` would.
    pub fn launch(&self) -> Result<command::AgentLaunch, String> {
        let dir =
            std::env::temp_dir().join(format!("mesh-sim-{}-{}", std::process::id(), self.name));
        // A directory left by an earlier process with this pid goes first.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(|e| format!("config dir {}: {e}", dir.display()))?;
        let launch = self.write_files(&dir).and_then(|()| {
            let mut args = self.flags.clone();
            args.push("-config-dir".into());
            args.push(dir.display().to_string());
            command::parse(&args).map_err(|e| e.to_string())
        });
        let _ = std::fs::remove_dir_all(&dir);
        launch
    }

    fn write_files(&self, dir: &std::path::Path) -> Result<(), String> {
        let path = |file: &str| dir.join(file).display().to_string();
        let cert = self.rpc_tls.cert(self.cert, &self.name);
        let mut tls = serde_json::json!({
            "tls": {
                "defaults": {
                    "ca_file": path("consul-agent-ca.pem"),
                    "cert_file": path("agent.pem"),
                    "key_file": path("agent-key.pem"),
                    "verify_incoming": true,
                    "verify_outgoing": true,
                },
                "internal_rpc": { "verify_server_hostname": true },
            }
        });
        if self.https {
            tls["tls"]["https"] = serde_json::json!({ "verify_incoming": false });
        }
        match (self.auto_encrypt, self.cert) {
            (false, _) => {}
            (true, CertKind::Server) => {
                tls["auto_encrypt"] = serde_json::json!({ "allow_tls": true });
            }
            (true, _) => {
                tls["auto_encrypt"] = serde_json::json!({ "tls": true });
                let defaults = tls["tls"]["defaults"]
                    .as_object_mut()
                    .expect("defaults is an object");
                defaults.remove("cert_file");
                defaults.remove("key_file");
                if self.https {
                    tls["tls"]["https"]["cert_file"] = path("agent.pem").into();
                    tls["tls"]["https"]["key_file"] = path("agent-key.pem").into();
                }
            }
        }
        let services = self
            .extra_services
            .lock()
            .expect("extra services lock")
            .clone();
        let mut files = vec![
            ("consul-agent-ca.pem", self.rpc_tls.ca_pem().to_owned()),
            ("agent.pem", cert.cert_pem.clone()),
            ("agent-key.pem", cert.key_pem.expose().to_owned()),
            ("tls.json", tls.to_string()),
            (
                "services.json",
                serde_json::json!({ "services": services }).to_string(),
            ),
        ];
        if let Some(agent) = &self.agent_json {
            files.push(("agent.json", agent.to_string()));
        }
        for (name, text) in &files {
            std::fs::write(dir.join(name), text).map_err(|e| format!("writing {name}: {e}"))?;
        }
        Ok(())
    }
}
