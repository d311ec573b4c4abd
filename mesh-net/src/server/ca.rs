//! The Connect CA on the servers: the first leader creates the cluster's
//! root, and the leader signs leaf certificates for agents.
//!
//! The certificate work is `mesh_core::connect::ca`'s; this file decides
//! when to do it and commits the results through Raft. Validity windows
//! are stamped with this host's wall clock ([`clock::wall_now`]), so the
//! simulator's clock faults reach them.

use mesh_core::connect::ca::{self as ca_crypto, IssuedLeaf, SecretPem};
use mesh_core::connect::SpiffeId;
use mesh_core::state::ca::CaConfig;
use mesh_core::state::CaCommand;
use openraft::AsyncRuntime;
use rand::Rng;

use super::*;

/// How often a leader without a CA tries again after a failed
/// initialization (no quorum, a write caught in a leader change).
const INIT_RETRY: Duration = Duration::from_millis(500);

impl Server {
    /// Runs for the server's lifetime: whenever this server leads and the
    /// replicated state has no CA yet, generates a root and commits it.
    pub(super) async fn ca_driver(self: Arc<Self>) {
        let mut views = self.leader_view.subscribe();
        loop {
            if self.is_leader() && self.view.read(|sm| sm.ca().active_root().is_none()) {
                if let Err(e) = self.initialize_ca().await {
                    warn!(error = %e, "could not create the cluster's CA root; will retry");
                    clock::sleep(INIT_RETRY).await;
                    continue;
                }
            }
            let _ = clock::timeout(Duration::from_secs(1), views.changed()).await;
        }
    }

    /// Runs for the server's lifetime on a server with
    /// `auto_encrypt.allow_tls`: trusts every Connect CA root the state
    /// holds (the active one and those rotated out whose agent
    /// certificates may still be in use) for client certificates on the
    /// RPC port.
    pub(super) async fn connect_roots_driver(self: Arc<Self>) {
        let Some(tls) = self
            .rpc_tls
            .clone()
            .filter(|t| t.signs_agent_certificates())
        else {
            return;
        };
        let mut view = self.view.clone();
        // Which roots are trusted, by the indexes that added and changed
        // them: compared after every applied entry, so kept cheap.
        let mut trusted: Vec<(u64, u64)> = Vec::new();
        loop {
            let (version, roots) = self.view.read(|sm| {
                let stored = sm.ca().roots();
                let version: Vec<(u64, u64)> = stored
                    .iter()
                    .map(|r| (r.create_index, r.modify_index))
                    .collect();
                let changed = trusted != version;
                let roots: Vec<String> = if changed {
                    stored
                        .iter()
                        .map(|r| r.root.root_cert_pem.clone())
                        .collect()
                } else {
                    Vec::new()
                };
                (version, changed.then_some(roots))
            });
            if let Some(roots) = roots {
                let count = roots.len();
                match tls.trust_connect_roots(roots) {
                    Ok(()) => info!(roots = count, "auto_encrypt: agent certificates of these Connect CA roots are trusted on the RPC port"),
                    Err(e) => warn!(error = %e, "auto_encrypt: the Connect CA roots do not load"),
                }
                trusted = version;
            }
            view.changed().await;
        }
    }

    async fn initialize_ca(&self) -> Result<(), String> {
        let (bytes, serial) = {
            let mut rng = crate::runtime::MeshRuntime::thread_rng();
            (rng.gen::<[u8; 16]>(), rng.gen::<u64>() >> 1)
        };
        let cluster_id = mesh_core::api::uuid_v4(bytes);
        let trust_domain = SpiffeId::trust_domain_of(&cluster_id);
        let config = self.view.read(|sm| sm.ca().config().clone());
        let root = ca_crypto::generate_root(
            &trust_domain,
            serial,
            clock::wall_now(),
            Duration::from_secs(config.root_cert_ttl_secs),
        )
        .map_err(|e| e.to_string())?;
        let cmd = CaCommand::Initialize {
            cluster_id,
            root: Box::new(root),
        };
        match self.write_here(cmd.into()).await {
            Ok(Response::Written {
                result: CommandResult::Bool(true),
                ..
            }) => {
                info!(%trust_domain, "created the cluster's Connect CA root");
                Ok(())
            }
            // Another leader's root got there first: it is the cluster's.
            Ok(Response::Written {
                result: CommandResult::Bool(false),
                ..
            }) => Ok(()),
            Ok(other) => Err(format!("the CA write was answered {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The active root and the leaf TTL, or why nothing can be signed.
    fn signing_root(&self) -> Result<(ca_crypto::CaRoot, u64), RpcError> {
        let (root, ttl) = self.view.read(|sm| {
            (
                sm.ca().active_root().cloned(),
                sm.ca().config().leaf_cert_ttl_secs,
            )
        });
        let root = root.ok_or_else(|| {
            RpcError::Internal(
                "the Connect CA is not initialized yet (the leader creates it after its \
                 election); retry shortly"
                    .into(),
            )
        })?;
        Ok((root, ttl))
    }

    /// Signs a client agent's RPC certificate (`auto_encrypt`) if this
    /// server leads and allows it.
    pub(super) fn sign_agent_cert_here(
        &self,
        node: &str,
        datacenter: &str,
        dns_san: &[String],
        ip_san: &[std::net::IpAddr],
        public_key_der: &[u8],
    ) -> Result<RpcResponse, RpcError> {
        let Some(tls) = self
            .rpc_tls
            .as_ref()
            .filter(|t| t.signs_agent_certificates())
        else {
            return Err(RpcError::Rejected(format!(
                "auto_encrypt.allow_tls is not set on server {}: it signs no agent certificates",
                self.info.name
            )));
        };
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        // Defence in depth: a server's role also needs the operator CA.
        let server_name = tls.server_name();
        // (Wildcards are refused when signing.)
        if let Some(name) = dns_san
            .iter()
            .find(|n| n.trim_end_matches('.').eq_ignore_ascii_case(&server_name))
        {
            return Err(RpcError::Rejected(format!(
                "dns_san {name:?} is the servers' name: an agent certificate cannot carry it"
            )));
        }
        let (root, ttl) = self.signing_root()?;
        let serial = crate::runtime::MeshRuntime::thread_rng().gen::<u64>() >> 1;
        ca_crypto::sign_agent_leaf(
            &root,
            datacenter,
            node,
            dns_san,
            ip_san,
            public_key_der,
            serial,
            clock::wall_now(),
            Duration::from_secs(ttl),
        )
        .map(Response::Leaf)
        .map_err(|e| RpcError::Rejected(format!("cannot sign an agent certificate: {e}")))
    }

    /// Signs a leaf if this server leads.
    pub(super) fn sign_leaf_here(
        &self,
        service: &str,
        datacenter: &str,
        public_key_der: &[u8],
    ) -> Result<RpcResponse, RpcError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        if mesh_core::connect::intention::validate_name("service", service).is_err()
            || service == mesh_core::connect::intention::WILDCARD
        {
            return Err(RpcError::Rejected(format!(
                "{service:?} is not a service name a leaf can be signed for"
            )));
        }
        let (root, ttl) = self.signing_root()?;
        let id = SpiffeId::service(&root.trust_domain, datacenter, service);
        let serial = crate::runtime::MeshRuntime::thread_rng().gen::<u64>() >> 1;
        ca_crypto::sign_leaf(
            &root,
            &id,
            public_key_der,
            serial,
            clock::wall_now(),
            Duration::from_secs(ttl),
        )
        .map(Response::Leaf)
        .map_err(|e| RpcError::Rejected(format!("cannot sign a leaf: {e}")))
    }

    /// Has the leader sign a leaf for `service` over `public_key_der`.
    pub async fn sign_leaf(
        &self,
        service: String,
        datacenter: String,
        public_key_der: Vec<u8>,
    ) -> Result<IssuedLeaf, RpcError> {
        self.on_leader(
            Request::SignLeaf {
                service,
                datacenter,
                public_key_der,
            },
            crate::routing::Idempotence::Idempotent,
            FORWARD_TIMEOUT,
        )
        .await?
        .into_leaf()
    }
}

impl Server {
    /// Rotates to a root made from `private_key` if this server leads:
    /// the new root carries a certificate for its key signed by the
    /// current root, so peers that still trust only the old root accept
    /// leaves of the new one; the old root stays trusted until its last
    /// leaf expires (`CaCommand::Rotate`).
    pub(super) async fn rotate_root_here(
        &self,
        private_key: &SecretPem,
        new_config: Option<CaConfig>,
    ) -> Result<RpcResponse, RpcError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let (old, current) = self
            .view
            .read(|sm| (sm.ca().active_root().cloned(), sm.ca().config().clone()));
        if let Some(Err(e)) = new_config.as_ref().map(CaConfig::validate) {
            return Err(RpcError::Rejected(e));
        }
        // The new root lives as long as the settings it comes with say.
        let config = new_config.clone().unwrap_or(current);
        let Some(old) = old else {
            return Err(RpcError::Internal(
                "the Connect CA is not initialized yet: nothing to rotate".into(),
            ));
        };
        let serial = crate::runtime::MeshRuntime::thread_rng().gen::<u64>() >> 1;
        let now = clock::wall_now();
        let rejected = |e: ca_crypto::CaError| RpcError::Rejected(e.to_string());
        let mut new = ca_crypto::root_with_key(
            private_key.expose(),
            &old.trust_domain,
            serial,
            now,
            Duration::from_secs(config.root_cert_ttl_secs),
        )
        .map_err(rejected)?;
        new.intermediate_certs = vec![ca_crypto::cross_sign(&old, &new, now).map_err(rejected)?];
        let cmd = CaCommand::Rotate {
            replaces: old.id.clone(),
            now_unix: now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            root: Box::new(new),
            config: new_config,
        };
        match self.write_here(cmd.into()).await? {
            Response::Written {
                result: CommandResult::Bool(true),
                ..
            } => {
                info!(old = %old.id, "rotated the Connect CA root");
                Ok(Response::Done)
            }
            Response::Written {
                result: CommandResult::Failed(m),
                ..
            } => Err(RpcError::Rejected(m)),
            other => Err(RpcError::Internal(format!(
                "the rotation was answered {other:?}"
            ))),
        }
    }

    /// Has the leader rotate the CA to a root made from `private_key`.
    pub async fn rotate_root(
        &self,
        private_key: SecretPem,
        config: Option<CaConfig>,
    ) -> Result<(), RpcError> {
        self.on_leader(
            Request::RotateRoot {
                private_key,
                config,
            },
            crate::routing::Idempotence::AtMostOnce,
            FORWARD_TIMEOUT,
        )
        .await
        .map(|_| ())
    }
}
