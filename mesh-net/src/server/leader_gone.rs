//! Noticing that the leader's process is gone, so the survivors elect a
//! new one without waiting out the PreVote lease (see "A leader that is
//! provably gone" in `mesh_core::election`).
//!
//! When a process dies, the kernel closes its sockets, and every
//! connection it had open to this server ends. An ended connection from
//! the leader's address is only a hint (connections also end for benign
//! reasons), so it is checked: this server dials the leader's RPC port,
//! and only a refused connection, or one reset before any request (nothing
//! listens there any more: the process is gone, or restarting), is
//! reported to the election machine as `LeaderGone`. A connection that
//! succeeds or times out reports nothing, and the lease decides as before.
//! A partition that rejects connections (an nftables `reject` rule, or
//! the simulator's network, which refuses across a cut link) also reads as
//! "gone": that costs the lease's protection, never safety, since a
//! PreVote still needs a majority and every vote is Raft's.

use mesh_core::election::Input;
use tokio::io::AsyncReadExt;

use super::*;

/// How long the dial to the leader may take. A live leader on the same
/// network answers a SYN within this; a slower answer proves nothing.
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);

impl Server {
    /// A served connection from `peer` ended: if it came from the leader's
    /// address, check whether the leader still listens.
    pub(super) fn peer_connection_closed(self: &Arc<Self>, peer: SocketAddr) {
        if self.is_leader() {
            return;
        }
        let Some(leader) = self.leader() else {
            return;
        };
        let Ok(leader_addr) = leader.rpc_addr.parse::<SocketAddr>() else {
            return;
        };
        if leader_addr.ip() != peer.ip() || self.probing_leader.swap(true, Ordering::SeqCst) {
            return;
        }
        let server = self.clone();
        tokio::spawn(async move {
            let refused =
                match clock::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(leader_addr))
                    .await
                {
                    Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
                    // A dying process's listening socket can still complete a
                    // handshake (its connections close before it does); the
                    // kernel then resets the connection, where a live server
                    // would wait for the request.
                    Ok(Ok(mut conn)) => {
                        let mut byte = [0u8; 1];
                        matches!(
                            clock::timeout(PROBE_TIMEOUT, conn.read(&mut byte)).await,
                            Ok(Ok(0) | Err(_))
                        )
                    }
                    Err(_) => false,
                };
            // Still the leader this server knew: a new term makes the
            // answer about someone else.
            let still = server.leader().is_some_and(|l| l.node_id == leader.node_id);
            if refused && still && !mutants::enabled(Mutant::LeaderGoneIgnored) {
                info!(
                    leader = %leader.name,
                    addr = %leader_addr,
                    "the leader's RPC port refused a connection: its process is gone; \
                     not waiting out its lease"
                );
                server.election_input(Input::LeaderGone {
                    leader: leader.node_id,
                });
            }
            server.probing_leader.store(false, Ordering::SeqCst);
        });
    }
}
