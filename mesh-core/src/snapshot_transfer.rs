//! Snapshot transfer in chunks: the receiving side's decisions.
//!
//! A snapshot can be far larger than one RPC frame, so the leader sends it
//! as a sequence of chunks `(offset, bytes)` and the follower answers each
//! with how many leading bytes it now holds. The sender always continues
//! from that number, which makes the transfer resumable: after a dropped
//! connection the leader starts again at offset 0, the follower answers
//! "I already hold N bytes" for the same snapshot, and the leader goes on
//! from N instead of resending everything.
//!
//! [`Reassembly`] decides what to do with each chunk; the caller stores
//! the bytes (the server appends them to a file, so a gigabyte snapshot is
//! never a gigabyte in memory). Only one transfer is kept at a time (a
//! newer snapshot replaces it).

/// Largest snapshot a receiver accepts, so a hostile or broken peer cannot
/// make it reserve unbounded memory.
pub const MAX_SNAPSHOT_LEN: u64 = 64 << 30;

/// Raw bytes per chunk: far below the 64 MiB frame limit, even after base64.
pub const CHUNK_LEN: usize = 4 << 20;

/// Identifies one snapshot transfer: chunks of different transfers never mix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferId {
    /// The sender's snapshot id (unique per snapshot it built).
    pub snapshot_id: String,
    /// The sender's term: a new leader's snapshot is a new transfer.
    pub term: u64,
    /// Total length of the snapshot in bytes.
    pub total_len: u64,
}

/// What the receiver does with a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The first chunk of a new transfer: drop whatever was stored, store
    /// this chunk, then call [`Reassembly::stored`].
    Begin,
    /// The next chunk of the current transfer: store it after what is
    /// stored, then call [`Reassembly::stored`].
    Append,
    /// A duplicate, early or orphan chunk: keep nothing of it and answer
    /// that the first `held` bytes are here.
    Answer {
        /// Bytes held so far.
        held: u64,
    },
}

/// What the receiver holds after storing a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The first `held` bytes are here; send from there.
    Partial {
        /// Bytes held so far.
        held: u64,
    },
    /// Every byte is here: install them.
    Complete,
}

/// A chunk the receiver refuses: the peer is broken; nothing is kept.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The announced snapshot exceeds [`MAX_SNAPSHOT_LEN`].
    #[error("snapshot of {0} bytes exceeds the {MAX_SNAPSHOT_LEN}-byte limit")]
    TooLarge(u64),
    /// The chunk runs past the announced total length.
    #[error("chunk at offset {offset} with {len} bytes runs past the snapshot's {total} bytes")]
    PastEnd {
        /// Chunk offset.
        offset: u64,
        /// Chunk length.
        len: u64,
        /// Announced total.
        total: u64,
    },
}

/// The receiving side of chunked snapshot transfers.
#[derive(Debug, Default)]
pub struct Reassembly {
    /// The transfer in progress and the bytes stored of it.
    current: Option<(TransferId, u64)>,
}

impl Reassembly {
    /// An idle receiver.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides what to do with a chunk of `len` bytes at `offset`.
    ///
    /// A chunk of another transfer than the current one starts a new
    /// transfer if it is the first chunk (offset 0), and is otherwise
    /// answered with `held: 0` so the sender restarts. Duplicate or early
    /// chunks of the current transfer change nothing and are answered with
    /// what is held, so the sender resumes at the right place.
    pub fn accept(&mut self, id: TransferId, offset: u64, len: u64) -> Result<Step, ChunkError> {
        if id.total_len > MAX_SNAPSHOT_LEN {
            return Err(ChunkError::TooLarge(id.total_len));
        }
        if offset.checked_add(len).is_none_or(|end| end > id.total_len) {
            return Err(ChunkError::PastEnd {
                offset,
                len,
                total: id.total_len,
            });
        }
        match &self.current {
            Some((cur, held)) if *cur == id => Ok(if offset == *held {
                Step::Append
            } else {
                Step::Answer { held: *held }
            }),
            _ if offset != 0 => Ok(Step::Answer { held: 0 }),
            _ => {
                self.current = Some((id, 0));
                Ok(Step::Begin)
            }
        }
    }

    /// Notes that the `len` bytes of the chunk [`Reassembly::accept`] let
    /// through are stored.
    ///
    /// # Panics
    ///
    /// If no transfer is in progress: the caller stores only what
    /// `accept` let through, and calls this once per such chunk.
    pub fn stored(&mut self, len: u64) -> Progress {
        let (id, held) = self
            .current
            .as_mut()
            .expect("stored() follows an accept() that let a chunk through");
        *held += len;
        if *held == id.total_len {
            self.current = None;
            Progress::Complete
        } else {
            Progress::Partial { held: *held }
        }
    }

    /// Forgets the transfer in progress (its bytes could not be stored):
    /// the sender is told to start over.
    pub fn abandon(&mut self) {
        self.current = None;
    }

    /// Bytes held by the transfer in progress (0 when idle).
    pub fn held(&self) -> u64 {
        self.current.as_ref().map_or(0, |(_, held)| *held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, total: u64) -> TransferId {
        TransferId {
            snapshot_id: name.into(),
            term: 3,
            total_len: total,
        }
    }

    /// A receiver and what it stored, as the server keeps them.
    #[derive(Default)]
    struct Receiver {
        r: Reassembly,
        stored: Vec<u8>,
    }

    impl Receiver {
        /// One chunk, as the server handles it: the answer, or the
        /// complete bytes.
        fn chunk(
            &mut self,
            id: TransferId,
            offset: u64,
            data: &[u8],
        ) -> Result<Progress, ChunkError> {
            match self.r.accept(id, offset, data.len() as u64)? {
                Step::Answer { held } => return Ok(Progress::Partial { held }),
                Step::Begin => self.stored.clear(),
                Step::Append => {}
            }
            self.stored.extend_from_slice(data);
            Ok(self.r.stored(data.len() as u64))
        }
    }

    #[test]
    fn chunks_in_order_complete_the_snapshot() {
        let mut r = Receiver::default();
        assert_eq!(
            r.chunk(id("s", 5), 0, b"ab"),
            Ok(Progress::Partial { held: 2 })
        );
        assert_eq!(
            r.chunk(id("s", 5), 2, b"cd"),
            Ok(Progress::Partial { held: 4 })
        );
        assert_eq!(r.chunk(id("s", 5), 4, b"e"), Ok(Progress::Complete));
        assert_eq!(r.stored, b"abcde");
        assert_eq!(r.r.held(), 0);
    }

    #[test]
    fn a_restarted_sender_resumes_where_the_receiver_is() {
        let mut r = Receiver::default();
        r.chunk(id("s", 6), 0, b"ab").unwrap();
        r.chunk(id("s", 6), 2, b"cd").unwrap();
        // The connection dropped; the sender starts over at 0.
        assert_eq!(
            r.r.accept(id("s", 6), 0, 2),
            Ok(Step::Answer { held: 4 }),
            "nothing stored twice"
        );
        assert_eq!(r.chunk(id("s", 6), 4, b"ef"), Ok(Progress::Complete));
        assert_eq!(r.stored, b"abcdef");
    }

    #[test]
    fn a_gap_is_answered_with_what_is_held() {
        let mut r = Receiver::default();
        r.chunk(id("s", 6), 0, b"ab").unwrap();
        assert_eq!(r.r.accept(id("s", 6), 4, 2), Ok(Step::Answer { held: 2 }));
        assert_eq!(r.r.held(), 2);
    }

    #[test]
    fn a_new_snapshot_replaces_the_old_transfer() {
        let mut r = Receiver::default();
        r.chunk(id("old", 4), 0, b"ab").unwrap();
        // A middle chunk of an unknown transfer: start over.
        assert_eq!(r.r.accept(id("new", 4), 2, 2), Ok(Step::Answer { held: 0 }));
        assert_eq!(
            r.r.held(),
            2,
            "the old transfer is kept until a new one starts"
        );
        assert_eq!(r.r.accept(id("new", 4), 0, 2), Ok(Step::Begin));
        r.stored.clear();
        r.stored.extend_from_slice(b"wx");
        assert_eq!(r.r.stored(2), Progress::Partial { held: 2 });
        assert_eq!(r.chunk(id("new", 4), 2, b"yz"), Ok(Progress::Complete));
        assert_eq!(r.stored, b"wxyz");
    }

    #[test]
    fn an_empty_snapshot_completes_at_once() {
        let mut r = Receiver::default();
        assert_eq!(r.chunk(id("e", 0), 0, b""), Ok(Progress::Complete));
    }

    /// A chunk that could not be stored abandons the transfer: the next
    /// chunk is answered `held: 0`, and the sender starts over.
    #[test]
    fn an_abandoned_transfer_starts_over() {
        let mut r = Receiver::default();
        r.chunk(id("s", 6), 0, b"ab").unwrap();
        assert_eq!(r.r.accept(id("s", 6), 2, 2), Ok(Step::Append));
        r.r.abandon();
        assert_eq!(r.r.accept(id("s", 6), 2, 2), Ok(Step::Answer { held: 0 }));
        assert_eq!(r.r.accept(id("s", 6), 0, 2), Ok(Step::Begin));
    }

    #[test]
    fn broken_chunks_are_refused() {
        let mut r = Reassembly::new();
        assert_eq!(
            r.accept(id("s", 2), 1, 2),
            Err(ChunkError::PastEnd {
                offset: 1,
                len: 2,
                total: 2
            })
        );
        assert_eq!(
            r.accept(id("s", 2), u64::MAX, 1),
            Err(ChunkError::PastEnd {
                offset: u64::MAX,
                len: 1,
                total: 2
            })
        );
        assert_eq!(
            r.accept(id("s", MAX_SNAPSHOT_LEN + 1), 0, 1),
            Err(ChunkError::TooLarge(MAX_SNAPSHOT_LEN + 1))
        );
        assert_eq!(r.held(), 0);
    }
}
