//! One quorum round confirms leadership for every read waiting for it
//! (the Raft thesis' ReadIndex, §6.4, batched as etcd batches it).
//!
//! A default-mode or consistent read is answered only after a quorum
//! acknowledged this leader. openraft's `ensure_linearizable` sends one
//! heartbeat to every voter per call, so 64 concurrent readers meant 128
//! RPCs per 64 reads, and reads were CPU-bound at 0.7x etcd's rate. Here
//! readers queue, and up to [`MAX_ROUNDS_IN_FLIGHT`] rounds run at a time:
//! each round takes everything queued *before it starts* and answers all
//! of it with its result. A read that finds a round free starts one at
//! once, so a lone reader pays one round, as before.
//!
//! The rule that keeps this linearizable: a read is answered only by a
//! round that began after the read arrived. A round that was already
//! running when the read arrived may have been acknowledged by a quorum
//! before a newer leader committed a write the reader has seen, so such a
//! read waits for a later round. The queue gives this for free: a round
//! drains the queue, then starts.

use tokio::sync::{mpsc, oneshot};

use super::*;

/// Reads waiting for a round; callers wait for room beyond this.
pub(super) const READ_QUEUE: usize = 4096;
/// Rounds running at once. More than one, so a read arriving during a
/// round does not wait for it to end; few, so rounds stay shared.
pub(super) const MAX_ROUNDS_IN_FLIGHT: usize = 2;

/// A read waiting for the next leadership confirmation.
pub(super) type WaitingRead = oneshot::Sender<Result<(), RpcError>>;

static ROUNDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static READS_CONFIRMED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Leadership rounds run, and reads they confirmed, by this process (the
/// simulator checks that concurrent reads shared rounds).
pub fn rounds_and_reads() -> (u64, u64) {
    (
        ROUNDS.load(std::sync::atomic::Ordering::Relaxed),
        READS_CONFIRMED.load(std::sync::atomic::Ordering::Relaxed),
    )
}

impl Server {
    /// Returns once a quorum has confirmed this leader in a round that
    /// began after the call (see the module comment).
    pub(super) async fn confirm_leadership(&self) -> Result<(), RpcError> {
        let (reply, answer) = oneshot::channel();
        if self.read_queue.send(reply).await.is_err() {
            return Err(RpcError::NoLeader);
        }
        // A dropped round (the server stopping) confirmed nothing; reads
        // have no effect, so the caller may retry elsewhere.
        answer.await.unwrap_or(Err(RpcError::NoLeader))
    }

    /// Runs rounds while reads wait, until the queue closes with the
    /// server.
    pub(super) async fn read_round_driver(self: Arc<Self>, mut queue: mpsc::Receiver<WaitingRead>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ROUNDS_IN_FLIGHT));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut round = vec![first];
            while let Ok(next) = queue.try_recv() {
                round.push(next);
            }
            let server = self.clone();
            tokio::spawn(async move {
                let result = server.leadership_round().await;
                drop(slot);
                ROUNDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if result.is_ok() {
                    READS_CONFIRMED
                        .fetch_add(round.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                for reply in round {
                    let _ = reply.send(result.clone());
                }
            });
        }
    }
}
