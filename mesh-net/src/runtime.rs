//! openraft's [`AsyncRuntime`] over `madsim-tokio`.
//!
//! openraft's bundled `TokioRuntime` calls real tokio, which panics inside the
//! madsim simulator. This runtime goes through the `tokio` name that the
//! workspace maps to `madsim-tokio`: plain tokio in production, the simulated
//! executor, timers and seeded RNG under `--cfg madsim`. The same Raft code
//! therefore runs on bare metal and in the simulation. Time comes from
//! [`crate::clock`], so a simulated host with a drifting clock runs its
//! Raft timers at its own pace.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend};

use crate::clock::{self, Elapsed, Timeout};

/// The runtime every Raft node of the mesh uses.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct MeshRuntime;

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
    type Instant = clock::Instant;
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
        clock::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        clock::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        clock::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        clock::timeout(
            deadline.saturating_duration_since(clock::Instant::now()),
            future,
        )
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
