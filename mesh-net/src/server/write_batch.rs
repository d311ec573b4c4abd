//! Group commit on the leader: KV writes that arrive while earlier ones
//! are being committed go into one Raft entry ([`Batch`]).
//!
//! openraft 0.9 appends each proposal to the leader's log and waits for
//! its fsync before it looks at the next one, so one write per entry
//! meant one fsync per write on the leader: about 0.8 per acknowledged
//! write at 64 clients, the serial step that capped throughput while the
//! host had CPU to spare. Here at most [`MAX_IN_FLIGHT`] entries are
//! proposed and unanswered at a time: a write that finds a free slot and
//! nothing queued is proposed at once, as a plain entry, by its own task;
//! otherwise it queues, and the batcher takes everything queued (up to
//! [`MAX_BATCH_COMMANDS`] and [`MAX_BATCH_BYTES`]) as one entry when a
//! slot frees. Batches grow exactly when the log is the bottleneck.
//!
//! Each write still gets its own result; all writes of a batch get the
//! batch's index, as the commands of one Consul transaction do. A batch
//! that fails (leadership lost, outcome unknown) fails each of its writes
//! with the same error, which is the truth for each of them.

use mesh_core::state::Batch;
use tokio::sync::{mpsc, oneshot};

use super::*;

/// Most commands in one batched entry.
pub(super) const MAX_BATCH_COMMANDS: usize = 128;
/// Most bytes (by [`Command::encoded_len_bound`]) of one batched entry;
/// a write larger than this goes alone.
pub(super) const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Entries proposed by the batcher and not yet answered.
pub(super) const MAX_IN_FLIGHT: usize = 4;
/// Writes waiting for a batch; callers wait for room beyond this.
pub(super) const WRITE_QUEUE: usize = 4096;

static BATCHES_PROPOSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many entries of two or more writes this process proposed (the
/// simulator checks that its group-commit scenario made some).
pub fn batches_proposed() -> u64 {
    BATCHES_PROPOSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// A write waiting for its batch, and where its answer goes.
pub(super) struct QueuedWrite {
    cmd: Command,
    reply: oneshot::Sender<Result<RpcResponse, RpcError>>,
}

impl Server {
    /// Proposes `cmd` in the next batch and answers as a write of its own
    /// would.
    pub(super) async fn write_batched(&self, cmd: Command) -> Result<RpcResponse, RpcError> {
        // Nothing waiting and a slot free: no batch to wait for.
        if self.write_queue.capacity() == self.write_queue.max_capacity() {
            if let Ok(_slot) = self.write_slots.try_acquire() {
                return self.propose(cmd).await;
            }
        }
        let (reply, answer) = oneshot::channel();
        if self
            .write_queue
            .send(QueuedWrite { cmd, reply })
            .await
            .is_err()
        {
            // Not queued, so not run.
            return Err(RpcError::NoLeader);
        }
        answer.await.unwrap_or_else(|_| {
            Err(RpcError::OutcomeUnknown(
                "the server stopped with the write in its batch".into(),
            ))
        })
    }

    /// Takes queued writes in batches and proposes them, until the queue
    /// closes with the server.
    pub(super) async fn write_batcher(self: Arc<Self>, mut queue: mpsc::Receiver<QueuedWrite>) {
        let slots = self.write_slots.clone();
        let mut carried: Option<QueuedWrite> = None;
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let first = match carried.take() {
                Some(w) => w,
                None => match queue.recv().await {
                    Some(w) => w,
                    None => return,
                },
            };
            let mut bytes = first.cmd.encoded_len_bound();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_COMMANDS {
                let Ok(next) = queue.try_recv() else {
                    break;
                };
                let size = next.cmd.encoded_len_bound();
                if bytes + size > MAX_BATCH_BYTES {
                    carried = Some(next);
                    break;
                }
                bytes += size;
                batch.push(next);
            }
            let server = self.clone();
            tokio::spawn(async move {
                server.propose_batch(batch).await;
                drop(slot);
            });
        }
    }

    async fn propose_batch(&self, mut batch: Vec<QueuedWrite>) {
        if batch.len() == 1 {
            let w = batch.pop().expect("one write");
            let _ = w.reply.send(self.propose(w.cmd).await);
            return;
        }
        let (commands, replies): (Vec<Command>, Vec<_>) =
            batch.into_iter().map(|w| (w.cmd, w.reply)).unzip();
        let n = commands.len();
        BATCHES_PROPOSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.propose(Command::Batch(Batch::Batch(commands))).await {
            Ok(Response::Written {
                index,
                result: CommandResult::Batch(results),
            }) if results.len() == n => {
                let mut results = results;
                if mutants::enabled(Mutant::BatchResultsMisrouted) {
                    results.reverse();
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(Response::Written { index, result }));
                }
            }
            Ok(other) => {
                let e = RpcError::Internal(format!("a batch of {n} writes was answered {other:?}"));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
