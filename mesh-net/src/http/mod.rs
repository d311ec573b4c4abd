//! The agent's HTTP API: Consul's paths, parameters, JSON shapes, headers
//! and status codes.
//!
//! Served with hyper's connection API over our own accept loop (no hyper
//! timer or executor), so the same code runs on tokio and in madsim.

mod params;
mod routes;

use std::convert::Infallible;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::clock;
use tracing::{debug, warn};

pub use params::{parse_duration_ms, percent_decode, Query};
pub use routes::HttpApi;

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, api: Arc<HttpApi>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "http accept failed");
                clock::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let api = api.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let svc = service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(api.handle(req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                // Malformed requests end here: hyper answers 400 and closes.
                debug!(%peer, error = %e, "http connection ended");
            }
        });
    }
}
