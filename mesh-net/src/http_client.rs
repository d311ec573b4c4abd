//! A small HTTP/1 client for the agent API, used by the CLI, the demo, the
//! simulator's workloads and the integration tests. It runs on the same
//! `tokio` (real or simulated) as the servers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::Request;
use hyper_util::rt::TokioIo;
use mesh_core::connect::SecretPem;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::clock;

/// Why a request got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// No TCP connection to the agent.
    #[error("cannot reach the agent at {addr}: {reason} (is `mesh agent` running? set MESH_HTTP_ADDR or -http-addr)")]
    Unreachable {
        /// Address.
        addr: String,
        /// Cause.
        reason: String,
    },
    /// The exchange failed midway.
    #[error("request to {addr} failed: {reason}")]
    Failed {
        /// Address.
        addr: String,
        /// Cause.
        reason: String,
    },
    /// No answer in time.
    #[error("request to {addr} timed out after {timeout:?}")]
    Timeout {
        /// Address.
        addr: String,
        /// Deadline.
        timeout: Duration,
    },
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How to reach an agent's HTTPS API: the CA its certificate chains to,
/// the name to verify it for, and this client's own certificate if the
/// agent requires one (`verify_incoming`).
#[derive(Clone)]
pub struct HttpsTarget {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for HttpsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsTarget")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl HttpsTarget {
    /// Trusts the certificates in `ca_pem`; verifies the agent as
    /// `server_name` (a DNS name or an IP address); presents `client`
    /// (certificate chain and key PEM) when given.
    pub fn new(
        ca_pem: &str,
        client: Option<(&str, &SecretPem)>,
        server_name: &str,
    ) -> Result<HttpsTarget, String> {
        let roots = crate::tls::pem_roots("the CA file", ca_pem)?;
        let provider = crate::tls::provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let (chain, key) = crate::tls::pem_chain_and_key(cert, key.expose())
                    .map_err(|e| format!("client certificate: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate and key: {e}"))?
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|_| format!("{server_name:?} is not a DNS name or IP address"))?;
        Ok(HttpsTarget {
            config: Arc::new(config),
            server_name,
        })
    }
}

/// A client that keeps one connection to one agent and reuses it.
pub struct HttpClient {
    addr: String,
    timeout: Duration,
    conn: Option<SendRequest<Full<Bytes>>>,
    tls: Option<HttpsTarget>,
}

impl HttpClient {
    /// A client for the agent at `addr` (host:port).
    pub fn new(addr: impl Into<String>, timeout: Duration) -> Self {
        Self {
            addr: addr.into(),
            timeout,
            conn: None,
            tls: None,
        }
    }

    /// The same client speaking HTTPS to `target`.
    pub fn with_tls(mut self, target: Option<HttpsTarget>) -> Self {
        self.tls = target;
        self
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, HttpClientError> {
        let unreachable = |reason: String| HttpClientError::Unreachable {
            addr: self.addr.clone(),
            reason,
        };
        let stream = clock::timeout(Duration::from_secs(2), TcpStream::connect(&self.addr))
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            let (send, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            return Ok(send);
        };
        let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
            .connect(tls.server_name.clone(), stream)
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        let (send, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    /// Sends one request; `path` includes the query string.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<HttpResponse, HttpClientError> {
        let timeout = self.timeout;
        match clock::timeout(timeout, self.request_inner(method, path, body)).await {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                Err(HttpClientError::Timeout {
                    addr: self.addr.clone(),
                    timeout,
                })
            }
        }
    }

    async fn request_inner(
        &mut self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<HttpResponse, HttpClientError> {
        let reusable = match &mut self.conn {
            Some(c) => c.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            self.conn = Some(self.connect().await?);
        }
        let send = self.conn.as_mut().expect("connected above");
        let failed = |reason: String| HttpClientError::Failed {
            addr: self.addr.clone(),
            reason,
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.as_str())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| failed(e.to_string()))?;
        let resp = match send.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.conn = None;
                return Err(failed(e.to_string()));
            }
        };
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes().to_vec(),
            Err(e) => {
                self.conn = None;
                return Err(failed(e.to_string()));
            }
        };
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}
