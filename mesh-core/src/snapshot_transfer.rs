//! Snapshot transfer in chunks: the receiving side's reassembly.
//!
//! A snapshot can be far larger than one RPC frame, so the leader sends it
//! as a sequence of chunks `(offset, bytes)` and the follower answers each
//! with how many leading bytes it now holds. The sender always continues
//! from that number, which makes the transfer resumable: after a dropped
//! connection the leader starts again at offset 0, the follower answers
//! "I already hold N bytes" for the same snapshot, and the leader goes on
//! from N instead of resending everything.
//!
//! Only one transfer is kept at a time (a newer snapshot replaces it), so
//! the receiver's memory is bounded by one snapshot.

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

/// What the receiver holds after a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The first `held` bytes are here; send from there.
    Partial {
        /// Bytes held so far.
        held: u64,
    },
    /// Every byte is here: install these.
    Complete(Vec<u8>),
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
    current: Option<(TransferId, Vec<u8>)>,
}

impl Reassembly {
    /// An idle receiver.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one chunk and says what the receiver now holds.
    ///
    /// A chunk of another transfer than the current one starts a new
    /// transfer if it is the first chunk (offset 0), and is otherwise
    /// answered with `held: 0` so the sender restarts. Duplicate or early
    /// chunks of the current transfer change nothing and are answered with
    /// what is held, so the sender resumes at the right place.
    pub fn accept(
        &mut self,
        id: TransferId,
        offset: u64,
        data: &[u8],
    ) -> Result<Progress, ChunkError> {
        if id.total_len > MAX_SNAPSHOT_LEN {
            return Err(ChunkError::TooLarge(id.total_len));
        }
        let len = data.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > id.total_len) {
            return Err(ChunkError::PastEnd {
                offset,
                len,
                total: id.total_len,
            });
        }
        let same = self.current.as_ref().is_some_and(|(cur, _)| *cur == id);
        if !same {
            if offset != 0 {
                return Ok(Progress::Partial { held: 0 });
            }
            // Reserve what the announcement says, but no more than one chunk
            // ahead: a lying total cannot reserve memory it never sends.
            let reserve = (id.total_len as usize).min(2 * CHUNK_LEN);
            self.current = Some((id, Vec::with_capacity(reserve)));
        }
        let (cur, buf) = self.current.as_mut().expect("set above");
        if offset == buf.len() as u64 {
            buf.extend_from_slice(data);
        }
        if buf.len() as u64 == cur.total_len {
            let (_, bytes) = self.current.take().expect("set above");
            return Ok(Progress::Complete(bytes));
        }
        Ok(Progress::Partial {
            held: buf.len() as u64,
        })
    }

    /// Bytes held by the transfer in progress (0 when idle).
    pub fn held(&self) -> u64 {
        self.current.as_ref().map_or(0, |(_, b)| b.len() as u64)
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

    #[test]
    fn chunks_in_order_complete_the_snapshot() {
        let mut r = Reassembly::new();
        assert_eq!(
            r.accept(id("s", 5), 0, b"ab"),
            Ok(Progress::Partial { held: 2 })
        );
        assert_eq!(
            r.accept(id("s", 5), 2, b"cd"),
            Ok(Progress::Partial { held: 4 })
        );
        assert_eq!(
            r.accept(id("s", 5), 4, b"e"),
            Ok(Progress::Complete(b"abcde".to_vec()))
        );
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn a_restarted_sender_resumes_where_the_receiver_is() {
        let mut r = Reassembly::new();
        r.accept(id("s", 6), 0, b"ab").unwrap();
        r.accept(id("s", 6), 2, b"cd").unwrap();
        // The connection dropped; the sender starts over at 0.
        assert_eq!(
            r.accept(id("s", 6), 0, b"ab"),
            Ok(Progress::Partial { held: 4 })
        );
        assert_eq!(
            r.accept(id("s", 6), 4, b"ef"),
            Ok(Progress::Complete(b"abcdef".to_vec()))
        );
    }

    #[test]
    fn a_gap_is_answered_with_what_is_held() {
        let mut r = Reassembly::new();
        r.accept(id("s", 6), 0, b"ab").unwrap();
        assert_eq!(
            r.accept(id("s", 6), 4, b"ef"),
            Ok(Progress::Partial { held: 2 })
        );
        assert_eq!(r.held(), 2);
    }

    #[test]
    fn a_new_snapshot_replaces_the_old_transfer() {
        let mut r = Reassembly::new();
        r.accept(id("old", 4), 0, b"ab").unwrap();
        // A middle chunk of an unknown transfer: start over.
        assert_eq!(
            r.accept(id("new", 4), 2, b"cd"),
            Ok(Progress::Partial { held: 0 })
        );
        assert_eq!(
            r.held(),
            2,
            "the old transfer is kept until a new one starts"
        );
        assert_eq!(
            r.accept(id("new", 4), 0, b"wx"),
            Ok(Progress::Partial { held: 2 })
        );
        assert_eq!(
            r.accept(id("new", 4), 2, b"yz"),
            Ok(Progress::Complete(b"wxyz".to_vec()))
        );
    }

    #[test]
    fn an_empty_snapshot_completes_at_once() {
        let mut r = Reassembly::new();
        assert_eq!(
            r.accept(id("e", 0), 0, b""),
            Ok(Progress::Complete(Vec::new()))
        );
    }

    #[test]
    fn broken_chunks_are_refused() {
        let mut r = Reassembly::new();
        assert_eq!(
            r.accept(id("s", 2), 1, b"ab"),
            Err(ChunkError::PastEnd {
                offset: 1,
                len: 2,
                total: 2
            })
        );
        assert_eq!(
            r.accept(id("s", 2), u64::MAX, b"a"),
            Err(ChunkError::PastEnd {
                offset: u64::MAX,
                len: 1,
                total: 2
            })
        );
        assert_eq!(
            r.accept(id("s", MAX_SNAPSHOT_LEN + 1), 0, b""),
            Err(ChunkError::TooLarge(MAX_SNAPSHOT_LEN + 1))
        );
        assert_eq!(r.held(), 0);
    }
}
