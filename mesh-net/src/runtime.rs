//! openraft's [`AsyncRuntime`] over `madsim-tokio`.
//!
//! openraft's bundled `TokioRuntime` calls real tokio, which panics inside the
//! madsim simulator. This runtime goes through the `tokio` name that the
//! workspace maps to `madsim-tokio`: plain tokio in production, the simulated
//! executor, timers and seeded RNG under `--cfg madsim`. The same Raft code
//! therefore runs on bare metal and in the simulation.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioInstant};

/// The runtime every Raft node of the mesh uses.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct MeshRuntime;

/// A future bounded by a deadline; nameable, unlike madsim's `timeout`.
pub struct Timeout<T> {
    future: Pin<Box<T>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

/// The deadline of a [`Timeout`] passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl<T: Future> Future for Timeout<T> {
    type Output = Result<T::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The inner future is polled first: a result that is ready at the
        // deadline wins, as in tokio.
        if let Poll::Ready(v) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The sender half of openraft's oneshot channel.
pub struct OneshotSender<T>(tokio::sync::oneshot::Sender<T>);

impl<T> fmt::Debug for OneshotSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OneshotSender")
    }
}

impl<T: OptionalSend> openraft::async_runtime::AsyncOneshotSendExt<T> for OneshotSender<T> {
    fn send(self, t: T) -> Result<(), T> {
        self.0.send(t)
    }
}

/// openraft's `Instant` is real tokio's, whose `now()` reads the clock that
/// madsim intercepts; convert a deadline into a duration on our timer.
fn until(deadline: TokioInstant) -> Duration {
    deadline.saturating_duration_since(TokioInstant::now())
}

/// The per-thread RNG for election timeouts: madsim's seeded generator in
/// the simulation, so a seed decides every election.
#[cfg(madsim)]
pub type Rng = tokio::madsim::rand::GlobalRng;
/// The per-thread RNG for election timeouts.
#[cfg(not(madsim))]
pub type Rng = rand::rngs::ThreadRng;

impl AsyncRuntime for MeshRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = Rng;
    type OneshotSender<T: OptionalSend> = OneshotSender<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep(until(deadline))
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future: Box::pin(future),
            sleep: Box::pin(tokio::time::sleep(duration)),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Self::timeout(until(deadline), future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        #[cfg(madsim)]
        {
            tokio::madsim::rand::thread_rng()
        }
        #[cfg(not(madsim))]
        {
            rand::thread_rng()
        }
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (OneshotSender(tx), rx)
    }
}
