//! The sidecar's control plane: everything the data plane needs, read
//! from the local agent's HTTP API as Consul's built-in proxy does, and
//! kept fresh with blocking queries.
//!
//! - the registration (`/v1/agent/services`): the `connect-proxy` service
//!   whose `Proxy.DestinationServiceID` is the `-sidecar-for` service gives
//!   the public port, the local app's address and the upstreams;
//! - the leaf and the roots (`/v1/agent/connect/ca/leaf/:service`,
//!   `/v1/agent/connect/ca/roots`), as [`TlsMaterial`];
//! - the intentions that name this service as destination
//!   (`/v1/connect/intentions/match`), decided locally for each inbound
//!   connection, so no request leaves the host per connection and the
//!   last known intentions keep deciding while no server answers;
//! - for each upstream, the healthy sidecars of its destination
//!   (`/v1/health/connect/:service?passing`).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mesh_core::api::agent::AgentSelf;
use mesh_core::connect::intention::{self, Intention};
use mesh_core::connect::SpiffeId;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{inbound, outbound, Authorizer, Limits, Metrics, TlsMaterial};
use crate::clock;
use crate::http_client::HttpClient;
use crate::tls::{Identity, TrustBundle};

/// How long one blocking query waits at the agent.
const BLOCKING_WAIT: &str = "10s";
/// The HTTP timeout of a blocking query: the wait plus slack.
const BLOCKING_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause after a failed query before the next.
const RETRY: Duration = Duration::from_millis(250);

/// What `mesh connect proxy` was told.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// The local agent's HTTP address (`127.0.0.1:8500`).
    pub agent_http: String,
    /// The service ID this sidecar fronts (`-sidecar-for`).
    pub sidecar_for: String,
    /// Data-plane bounds.
    pub limits: Limits,
}

/// Why a sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The agent did not answer or answered an error.
    #[error("the local agent at {agent}: {reason}")]
    Agent {
        /// The agent's address.
        agent: String,
        /// What went wrong.
        reason: String,
    },
    /// No `connect-proxy` registration names the service.
    #[error(
        "no sidecar is registered for service {0:?} on this agent: register the service with \
         connect {{ sidecar_service {{}} }} first"
    )]
    NotRegistered(String),
    /// The registration is unusable.
    #[error("the sidecar registration for {service:?}: {reason}")]
    BadRegistration {
        /// The service.
        service: String,
        /// What is wrong.
        reason: String,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One upstream of the registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// The destination service.
    pub destination: String,
    /// Where the local app connects.
    pub local_bind: SocketAddr,
}

/// The sidecar registration, as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The sidecar's own service ID.
    pub proxy_id: String,
    /// The service whose identity it carries.
    pub service: String,
    /// The public mTLS listener.
    pub public: SocketAddr,
    /// The local app; `None` for a consumer that takes no connections
    /// (no `LocalServicePort`): its public listener refuses everyone.
    pub local_app: Option<SocketAddr>,
    /// The upstreams.
    pub upstreams: Vec<UpstreamSpec>,
}

/// A running sidecar; dropping it stops every task.
pub struct RunningSidecar {
    /// What it was configured from.
    pub registration: Registration,
    /// Connection and byte counters.
    pub metrics: Arc<Metrics>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for RunningSidecar {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn agent_error(agent: &str, reason: impl Into<String>) -> SidecarError {
    SidecarError::Agent {
        agent: agent.to_owned(),
        reason: reason.into(),
    }
}

async fn get_json(client: &mut HttpClient, path: &str) -> Result<(Value, u64), String> {
    let resp = client
        .request("GET", path, Vec::new())
        .await
        .map_err(|e| e.to_string())?;
    if resp.status != 200 {
        return Err(format!(
            "GET {path}: {} {}",
            resp.status,
            resp.text().trim()
        ));
    }
    let index = resp
        .header("x-consul-index")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let v = serde_json::from_slice(&resp.body).map_err(|e| format!("GET {path}: bad JSON: {e}"))?;
    Ok((v, index))
}

fn addr(host: &str, port: u64, what: &str, service: &str) -> Result<SocketAddr, SidecarError> {
    let ip: IpAddr = host.parse().map_err(|_| SidecarError::BadRegistration {
        service: service.to_owned(),
        reason: format!("{what} {host:?} is not an IP address"),
    })?;
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| SidecarError::BadRegistration {
            service: service.to_owned(),
            reason: format!("{what} has no usable port ({port})"),
        })?;
    Ok(SocketAddr::new(ip, port))
}

/// Reads the registration of the sidecar for `sidecar_for` from the
/// agent's services; `node_address` is where it listens when the
/// registration names no address.
pub fn registration_from(
    services: &Value,
    sidecar_for: &str,
    node_address: &str,
) -> Result<Registration, SidecarError> {
    let proxies = services
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|s| s["Kind"] == "connect-proxy");
    let mut found = None;
    for s in proxies {
        let p = &s["Proxy"];
        if p["DestinationServiceID"] == sidecar_for
            || (found.is_none() && p["DestinationServiceName"] == sidecar_for)
        {
            found = Some(s);
        }
    }
    let s = found.ok_or_else(|| SidecarError::NotRegistered(sidecar_for.to_owned()))?;
    let p = &s["Proxy"];
    let service = p["DestinationServiceName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| SidecarError::BadRegistration {
            service: sidecar_for.to_owned(),
            reason: "Proxy.DestinationServiceName is empty".into(),
        })?
        .to_owned();
    let host = s["Address"]
        .as_str()
        .filter(|a| !a.is_empty())
        .unwrap_or(node_address);
    let public = addr(
        host,
        s["Port"].as_u64().unwrap_or(0),
        "the public listener",
        &service,
    )?;
    let app_host = p["LocalServiceAddress"]
        .as_str()
        .filter(|a| !a.is_empty())
        .unwrap_or("127.0.0.1");
    let local_app = match p["LocalServicePort"].as_u64().unwrap_or(0) {
        0 => None,
        port => Some(addr(app_host, port, "the local service", &service)?),
    };
    let mut upstreams = Vec::new();
    for u in p["Upstreams"].as_array().into_iter().flatten() {
        let destination = u["DestinationName"].as_str().unwrap_or_default().to_owned();
        if destination.is_empty() {
            return Err(SidecarError::BadRegistration {
                service,
                reason: "an upstream has no DestinationName".into(),
            });
        }
        let bind_host = u["LocalBindAddress"]
            .as_str()
            .filter(|a| !a.is_empty())
            .unwrap_or("127.0.0.1");
        let local_bind = addr(
            bind_host,
            u["LocalBindPort"].as_u64().unwrap_or(0),
            &format!("the upstream for {destination}"),
            &service,
        )?;
        upstreams.push(UpstreamSpec {
            destination,
            local_bind,
        });
    }
    Ok(Registration {
        proxy_id: s["ID"].as_str().unwrap_or_default().to_owned(),
        service,
        public,
        local_app,
        upstreams,
    })
}

/// Starts the sidecar for `opts.sidecar_for`: reads its registration,
/// binds its listeners, and starts the watches and the data plane.
pub async fn start(opts: ProxyOptions) -> Result<RunningSidecar, SidecarError> {
    let agent = opts.agent_http.clone();
    let mut client = HttpClient::new(agent.clone(), Duration::from_secs(10));
    let (me, _) = get_json(&mut client, "/v1/agent/self")
        .await
        .map_err(|e| agent_error(&agent, e))?;
    let me: AgentSelf = serde_json::from_value(me)
        .map_err(|e| agent_error(&agent, format!("GET /v1/agent/self: {e}")))?;
    let node_address = if me.member.addr.is_empty() {
        "127.0.0.1".to_owned()
    } else {
        me.member.addr
    };
    let default_allow = me.debug_config.acl_resolver_settings.acl_default_policy == "allow";
    let (services, _) = get_json(&mut client, "/v1/agent/services")
        .await
        .map_err(|e| agent_error(&agent, e))?;
    let registration = registration_from(&services, &opts.sidecar_for, &node_address)?;

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| SidecarError::Bind { addr, source })
    };
    let public = bind(registration.public).await?;
    let mut upstream_listeners = Vec::new();
    for u in &registration.upstreams {
        upstream_listeners.push((u.clone(), bind(u.local_bind).await?));
    }

    let metrics = Arc::new(Metrics::default());
    let (tls_tx, tls_rx) = watch::channel(None);
    let intentions: Arc<RwLock<Option<Vec<Intention>>>> = Arc::new(RwLock::new(None));
    let mut tasks = vec![
        tokio::spawn(watch_tls(
            agent.clone(),
            registration.service.clone(),
            tls_tx,
        )),
        tokio::spawn(watch_intentions(
            agent.clone(),
            registration.service.clone(),
            intentions.clone(),
        )),
    ];
    let authorize = authorizer(registration.service.clone(), intentions, default_allow);
    tasks.push(match registration.local_app {
        Some(app) => tokio::spawn(inbound::serve(
            public,
            tls_rx.clone(),
            authorize,
            app,
            opts.limits.clone(),
            metrics.clone(),
        )),
        // Listening still (the registration's check probes the port), but
        // nothing is behind it.
        None => tokio::spawn(async move {
            while let Ok((conn, _)) = public.accept().await {
                drop(conn);
            }
        }),
    });
    for (u, listener) in upstream_listeners {
        let (tx, rx) = watch::channel(Vec::new());
        tasks.push(tokio::spawn(watch_instances(
            agent.clone(),
            u.destination.clone(),
            tx,
        )));
        tasks.push(tokio::spawn(outbound::serve_upstream(
            listener,
            tls_rx.clone(),
            u.destination.clone(),
            rx,
            opts.limits.clone(),
            metrics.clone(),
        )));
    }
    info!(
        service = %registration.service,
        public = %registration.public,
        local_app = ?registration.local_app,
        upstreams = registration.upstreams.len(),
        "sidecar started"
    );
    Ok(RunningSidecar {
        registration,
        metrics,
        tasks,
    })
}

/// Decides inbound connections to `service` from the cached intentions;
/// refuses while none were ever loaded.
fn authorizer(
    service: String,
    intentions: Arc<RwLock<Option<Vec<Intention>>>>,
    default_allow: bool,
) -> Authorizer {
    Arc::new(move |peer: &SpiffeId| {
        let guard = intentions.read().expect("intentions lock");
        let Some(list) = guard.as_ref() else {
            return Err("the intentions are not loaded yet".into());
        };
        let d = intention::decide(list, &peer.service, &service, default_allow);
        if d.allowed {
            Ok(())
        } else {
            Err(d.reason)
        }
    })
}

/// Follows this service's leaf and the roots; publishes each new pair.
async fn watch_tls(agent: String, service: String, tx: watch::Sender<Option<Arc<TlsMaterial>>>) {
    let mut client = HttpClient::new(agent, BLOCKING_TIMEOUT);
    let mut leaf_index = 0;
    let mut last: Option<(String, Vec<String>)> = None;
    loop {
        let leaf_path =
            format!("/v1/agent/connect/ca/leaf/{service}?index={leaf_index}&wait={BLOCKING_WAIT}");
        let leaf = get_json(&mut client, &leaf_path).await;
        let roots = get_json(&mut client, "/v1/agent/connect/ca/roots").await;
        let ((leaf, index), (roots, _)) = match (leaf, roots) {
            (Ok(l), Ok(r)) => (l, r),
            (Err(e), _) | (_, Err(e)) => {
                warn!(%service, error = %e, "could not refresh the leaf or the roots; keeping the current ones");
                clock::sleep(RETRY).await;
                continue;
            }
        };
        leaf_index = index;
        let cert = leaf["CertPEM"].as_str().unwrap_or_default().to_owned();
        let key = leaf["PrivateKeyPEM"].as_str().unwrap_or_default();
        let trust_domain = roots["TrustDomain"].as_str().unwrap_or_default();
        let mut pems = Vec::new();
        for r in roots["Roots"].as_array().into_iter().flatten() {
            pems.extend(r["RootCert"].as_str().map(str::to_owned));
        }
        let now = (cert.clone(), pems.clone());
        if last.as_ref() == Some(&now) {
            continue;
        }
        let material = Identity::from_pem(&cert, key).and_then(|identity| {
            Ok(TlsMaterial {
                identity,
                bundle: TrustBundle::from_pems(&pems, trust_domain)?,
            })
        });
        match material {
            Ok(m) => {
                info!(%service, roots = pems.len(), "TLS material loaded");
                tx.send_replace(Some(Arc::new(m)));
                last = Some(now);
            }
            Err(e) => {
                warn!(%service, error = %e, "the agent's leaf or roots are unusable");
                clock::sleep(RETRY).await;
            }
        }
    }
}

/// Follows the intentions with `service` as destination.
async fn watch_intentions(
    agent: String,
    service: String,
    cache: Arc<RwLock<Option<Vec<Intention>>>>,
) {
    let mut client = HttpClient::new(agent, BLOCKING_TIMEOUT);
    let mut index = 0;
    loop {
        let path = format!(
            "/v1/connect/intentions/match?by=destination&name={service}&index={index}&wait={BLOCKING_WAIT}&cached"
        );
        match get_json(&mut client, &path).await {
            Ok((v, i)) => {
                match serde_json::from_value::<Vec<Intention>>(v[&service].clone()) {
                    Ok(list) => {
                        let mut cached = cache.write().expect("intentions lock");
                        if cached.as_ref() != Some(&list) {
                            info!(%service, intentions = list.len(), index = i, "intentions changed");
                        }
                        *cached = Some(list);
                        drop(cached);
                        // An index that went backwards (a new leader's
                        // state, a restored snapshot) starts over.
                        index = if i < index { 0 } else { i };
                    }
                    Err(e) => {
                        warn!(%service, error = %e, "the agent sent unreadable intentions");
                        clock::sleep(RETRY).await;
                    }
                }
            }
            Err(e) => {
                warn!(%service, error = %e, "could not refresh the intentions; deciding from the last ones");
                clock::sleep(RETRY).await;
            }
        }
    }
}

/// Follows the healthy sidecars of `destination`.
async fn watch_instances(agent: String, destination: String, tx: watch::Sender<Vec<SocketAddr>>) {
    let mut client = HttpClient::new(agent, BLOCKING_TIMEOUT);
    let mut index = 0;
    loop {
        let path =
            format!("/v1/health/connect/{destination}?passing&index={index}&wait={BLOCKING_WAIT}");
        match get_json(&mut client, &path).await {
            Ok((v, i)) => {
                let mut addrs: Vec<SocketAddr> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|row| {
                        let s = &row["Service"];
                        let host = s["Address"]
                            .as_str()
                            .filter(|a| !a.is_empty())
                            .or(row["Node"]["Address"].as_str())?;
                        let port = u16::try_from(s["Port"].as_u64()?).ok()?;
                        Some(SocketAddr::new(host.parse().ok()?, port))
                    })
                    .collect();
                addrs.sort();
                addrs.dedup();
                if *tx.borrow() != addrs {
                    info!(%destination, instances = addrs.len(), "upstream instances changed");
                    tx.send_replace(addrs);
                }
                index = if i < index { 0 } else { i };
            }
            Err(e) => {
                warn!(%destination, error = %e, "could not refresh the upstream's instances; using the last ones");
                clock::sleep(RETRY).await;
            }
        }
    }
}
