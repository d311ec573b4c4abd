//! Bidirectional copy between a downstream and an upstream connection.
//!
//! Each direction has one buffer of `buffer_bytes`, so a connection holds a
//! fixed amount of memory however fast one side writes and however slowly
//! the other reads. End of stream on one side shuts down the write half of
//! the other (a TLS close_notify, then a TCP FIN) while the other direction
//! keeps flowing: a client that sends its request and half-closes still
//! gets the whole answer. No bytes either way for `idle_timeout` closes
//! both sides. `tokio::io::copy_bidirectional` has no idle timeout, hence
//! this loop.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Metrics;
use crate::clock::{self, Instant};

/// How a pipe ended.
#[derive(Debug)]
pub enum PipeEnd {
    /// Both sides finished sending (end of stream each way).
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// A read or write failed (reset, TLS error); both sides are dropped.
    Failed(io::Error),
}

/// What went through a pipe.
#[derive(Debug)]
pub struct PipeStats {
    /// Bytes from downstream to upstream.
    pub bytes_in: u64,
    /// Bytes from upstream to downstream.
    pub bytes_out: u64,
    /// Why it stopped.
    pub end: PipeEnd,
}

/// Copies both ways between `downstream` (the side that opened the
/// connection) and `upstream` until both directions end, one fails, or
/// nothing moves for `idle_timeout`. Both streams are dropped on return.
pub async fn pipe<D, U>(
    downstream: D,
    upstream: U,
    buffer_bytes: usize,
    idle_timeout: Duration,
    metrics: &Metrics,
) -> PipeStats
where
    D: AsyncRead + AsyncWrite + Send,
    U: AsyncRead + AsyncWrite + Send,
{
    assert!(buffer_bytes > 0, "a pipe needs a buffer");
    let (down_read, down_write) = tokio::io::split(downstream);
    let (up_read, up_write) = tokio::io::split(upstream);
    let activity = Activity::new();
    let bytes_in = AtomicU64::new(0);
    let bytes_out = AtomicU64::new(0);
    let copy_in = copy_one_way(
        down_read,
        up_write,
        buffer_bytes,
        &activity,
        &bytes_in,
        |n| metrics.add_bytes_in(n),
    );
    let copy_out = copy_one_way(
        up_read,
        down_write,
        buffer_bytes,
        &activity,
        &bytes_out,
        |n| metrics.add_bytes_out(n),
    );
    // try_join: the first failure ends both directions at once, instead of
    // leaving the other waiting for a peer that will never speak again.
    let both = futures::future::try_join(copy_in, copy_out);
    let end = tokio::select! {
        biased;
        done = both => match done {
            Ok(((), ())) => PipeEnd::Closed,
            Err(e) => PipeEnd::Failed(e),
        },
        () = activity.idle_for(idle_timeout) => PipeEnd::Idle,
    };
    PipeStats {
        bytes_in: bytes_in.load(Ordering::Relaxed),
        bytes_out: bytes_out.load(Ordering::Relaxed),
        end,
    }
}

async fn copy_one_way<R, W>(
    mut from: R,
    mut to: W,
    buffer_bytes: usize,
    activity: &Activity,
    total: &AtomicU64,
    count: impl Fn(u64),
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; buffer_bytes];
    loop {
        let n = from.read(&mut buf).await?;
        activity.touch();
        if n == 0 {
            // Half-close: pass the end of stream on, keep the other way open.
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        // Simulated TCP (and TLS records) go out only on flush.
        to.flush().await?;
        activity.touch();
        let n = n as u64;
        total.fetch_add(n, Ordering::Relaxed);
        count(n);
    }
}

/// When bytes last moved, as an offset from the pipe's start.
struct Activity {
    start: Instant,
    last_ns: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ns: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let since = Instant::now().saturating_duration_since(self.start);
        let ns = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        self.last_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            clock::sleep_until(deadline).await;
        }
    }
}
