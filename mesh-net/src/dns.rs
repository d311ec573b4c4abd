//! The agent's DNS interface (Consul's port 8600, UDP and TCP): sockets
//! and catalog reads around `mesh_core::dns`, which decides the answers.
//!
//! Reads are stale (any server answers from its own state), as Consul's
//! DNS default `allow_stale = true`: DNS stays up without a leader and
//! answers follow the catalog within replication lag. A read that fails
//! (no server reachable) is SERVFAIL, never a wrong NXDOMAIN.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::dns::{self, Transport};
use mesh_core::wire::{Consistency, QueryResult, ReadRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::debug;

use crate::backend::Cluster;
use crate::clock;

/// Longest wait for the catalog read behind one answer.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// An idle TCP connection is closed after this long.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Answers one query (`None`: not a query; drop it).
async fn answer(
    cluster: &dyn Cluster,
    datacenter: &str,
    bytes: &[u8],
    transport: Transport,
) -> Option<Vec<u8>> {
    let request = match dns::parse(bytes, datacenter) {
        Ok(r) => r,
        Err(bad) => return bad.answer,
    };
    let Some(lookup) = &request.lookup else {
        return Some(dns::respond(&request, None, datacenter, 1, transport));
    };
    let read = ReadRequest {
        query: lookup.catalog_query().into(),
        consistency: Consistency::Stale,
        min_index: 0,
        wait_ms: 0,
    };
    match clock::timeout(READ_TIMEOUT, cluster.read(read)).await {
        Ok(Ok(resp)) => match &resp.result {
            QueryResult::Catalog(slice) => Some(dns::respond(
                &request,
                Some(slice),
                datacenter,
                resp.index,
                transport,
            )),
            _ => Some(dns::servfail(&request)),
        },
        Ok(Err(e)) => {
            debug!(error = %e, "DNS lookup could not read the catalog");
            Some(dns::servfail(&request))
        }
        Err(_) => Some(dns::servfail(&request)),
    }
}

/// Serves DNS over UDP until the task is dropped.
pub async fn serve_udp(socket: UdpSocket, cluster: Arc<dyn Cluster>, datacenter: String) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "DNS receive failed");
                clock::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let (socket, cluster, dc) = (socket.clone(), cluster.clone(), datacenter.clone());
        tokio::spawn(async move {
            if let Some(reply) = answer(cluster.as_ref(), &dc, &query, Transport::Udp).await {
                send_to(&socket, &reply, peer).await;
            }
        });
    }
}

/// Sends one datagram (madsim's `send_to` takes its arguments in the
/// other order).
#[cfg(not(madsim))]
async fn send_to(socket: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    let _ = socket.send_to(bytes, to).await;
}

#[cfg(madsim)]
async fn send_to(socket: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    let _ = socket.send_to(to, bytes).await;
}

/// Serves DNS over TCP (RFC 1035 §4.2.2 length-prefixed messages) until
/// the task is dropped.
pub async fn serve_tcp(listener: TcpListener, cluster: Arc<dyn Cluster>, datacenter: String) {
    // Connections end with the loop, as a stopped process's would.
    let connections = crate::owned_tasks::Connections::new();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            clock::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (cluster, dc) = (cluster.clone(), datacenter.clone());
        connections.spawn(async move {
            if let Err(e) = tcp_connection(stream, cluster.as_ref(), &dc).await {
                debug!(%peer, error = %e, "DNS TCP connection ended");
            }
        });
    }
}

async fn tcp_connection(
    mut stream: TcpStream,
    cluster: &dyn Cluster,
    datacenter: &str,
) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match clock::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return Ok(()),
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        clock::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "slow query"))??;
        let Some(reply) = answer(cluster, datacenter, &query, Transport::Tcp).await else {
            return Ok(());
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return Ok(());
        };
        stream.write_all(&reply_len.to_be_bytes()).await?;
        stream.write_all(&reply).await?;
        // A no-op on a kernel socket, but what AsyncWrite asks for: a
        // buffering stream (madsim's TCP, a BufWriter) sends on flush.
        stream.flush().await?;
    }
}

/// Binds DNS on `addr`, UDP and TCP.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    Ok((UdpSocket::bind(addr).await?, TcpListener::bind(addr).await?))
}
