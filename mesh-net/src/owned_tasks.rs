//! Connection tasks owned by the accept loop that spawned them.
//!
//! A server that stops by dropping (or aborting) its accept loop must also
//! end the connections that loop spawned, as a stopped process's would:
//! otherwise they run on unowned, holding sockets and answering from a
//! state that was meant to be gone (an agent restarted in the same
//! process, a sidecar restarted by its supervisor). A [`Drain`] lets the
//! one who stops them wait until they have.

use std::time::Duration;

use tokio::sync::mpsc;

/// Ends every task it spawned when it is dropped.
pub struct Connections {
    alive: tokio::sync::watch::Sender<()>,
    /// Held by every connection task, so that a [`Drain`] sees them end.
    token: Option<DrainToken>,
}

impl Default for Connections {
    fn default() -> Self {
        Self::new()
    }
}

impl Connections {
    /// No connections yet.
    pub fn new() -> Self {
        Connections {
            alive: tokio::sync::watch::channel(()).0,
            token: None,
        }
    }

    /// No connections yet; `drain` waits for every one to end.
    pub fn tracked(token: DrainToken) -> Self {
        Connections {
            token: Some(token),
            ..Self::new()
        }
    }

    /// Spawns `conn`, ended when `self` is dropped.
    pub fn spawn(&self, conn: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut stop = self.alive.subscribe();
        let token = self.token.clone();
        tokio::spawn(async move {
            tokio::select! {
                biased;
                _ = stop.changed() => {}
                () = conn => {}
            }
            drop(token);
        });
    }

    /// Spawns the connection `make` builds, told through [`Stopping`] when
    /// `self` is dropped, so that it can finish what it was doing (an
    /// answer being written) and end on its own.
    pub fn spawn_graceful<F, Fut>(&self, make: F)
    where
        F: FnOnce(Stopping) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let conn = make(Stopping(self.alive.subscribe()));
        let token = self.token.clone();
        tokio::spawn(async move {
            conn.await;
            drop(token);
        });
    }
}

/// Waits for the connections of stopped servers to end, so that whoever
/// stops them (an agent restarted in the same process) knows their sockets
/// are closed before it binds the same ports again.
pub struct Drain {
    tx: mpsc::Sender<()>,
    rx: mpsc::Receiver<()>,
}

/// Held by everything a [`Drain`] waits for.
#[derive(Clone)]
pub struct DrainToken(#[allow(dead_code)] mpsc::Sender<()>);

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    /// Nothing to wait for yet.
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(1);
        Drain { tx, rx }
    }

    /// A token for one more server (its connections hold clones).
    pub fn token(&self) -> DrainToken {
        DrainToken(self.tx.clone())
    }

    /// Waits until every token is dropped, at most `bound`; whether they
    /// all were.
    pub async fn wait(self, bound: Duration) -> bool {
        let Drain { tx, mut rx } = self;
        drop(tx);
        crate::clock::timeout(bound, rx.recv()).await.is_ok()
    }
}

/// Resolves once the accept loop that spawned the connection is gone.
pub struct Stopping(tokio::sync::watch::Receiver<()>);

impl Stopping {
    /// Waits until the owner is dropped.
    pub async fn wait(&mut self) {
        while self.0.changed().await.is_ok() {}
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn dropping_the_owner_ends_its_connections_and_the_drain_sees_it() {
        let drain = Drain::new();
        let connections = Connections::tracked(drain.token());
        let ended = Arc::new(AtomicBool::new(false));
        let flag = ended.clone();
        connections.spawn(async move {
            // A connection that would never end on its own; the guard
            // records that its future was dropped.
            struct Guard(Arc<AtomicBool>);
            impl Drop for Guard {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _guard = Guard(flag);
            std::future::pending::<()>().await
        });
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        connections.spawn_graceful(|mut stopping| async move {
            stopping.wait().await;
            // Finishing what it was doing.
            tokio::task::yield_now().await;
            done.store(true, Ordering::SeqCst);
        });
        // A drain whose token is still held gives up at its bound.
        let other = Drain::new();
        let _held = other.token();
        assert!(!other.wait(Duration::from_millis(20)).await);
        // The owner lives: its connections do too.
        assert!(!ended.load(Ordering::SeqCst));
        drop(connections);
        assert!(drain.wait(Duration::from_secs(5)).await, "every task ended");
        assert!(
            ended.load(Ordering::SeqCst),
            "the plain connection was dropped"
        );
        assert!(
            finished.load(Ordering::SeqCst),
            "the graceful one finished its work"
        );
    }
}
