//! On-disk record format for append-only files (Raft log, vote, snapshot
//! meta) and the scan that recovers such a file after a crash.
//!
//! # Format
//!
//! ```text
//! [len: u32 LE][crc32: u32 LE over (kind, payload)][kind: u8][payload: len bytes]
//!  \_______________ RECORD_HEADER_LEN = 9 ________________/
//! ```
//!
//! The checksum covers the kind byte too, so a flipped kind cannot turn, say,
//! a log entry into a truncation marker. The length is deliberately outside
//! the checksum: it must be read before the checksum can be checked, and a
//! damaged length is caught because the checksum then covers the wrong bytes.
//!
//! # Recovery rule
//!
//! Writers append records in order and fsync before acknowledging them, so a
//! crash can only damage the **end** of a file: a write that was in flight may
//! be partly on disk (torn), and some filesystems extend the file first and
//! leave the unwritten part zero-filled. [`scan`] therefore reads records from
//! offset 0 and, at the first record that is invalid (incomplete header,
//! length above [`MAX_RECORD_LEN`], length overrunning end of file, or
//! checksum mismatch), decides:
//!
//! * **Torn tail** if that record is the last thing in the file: its claimed
//!   extent (header + claimed length) reaches or passes end of file, or every
//!   byte from its offset to end of file is zero, and no valid record starts
//!   anywhere after it. Nothing after it could have been acknowledged, so it
//!   is reported in [`Scan::torn_tail`] and the caller truncates the file to
//!   [`Scan::valid_len`] before appending again.
//! * **Corruption in the middle** otherwise: valid data follows the bad
//!   record, which the append-then-fsync discipline cannot produce. Those
//!   later bytes may be acknowledged records, so dropping them would silently
//!   lose committed data. [`scan`] returns [`CorruptRecord`] naming the offset
//!   and the node refuses to start until an operator intervenes. This
//!   includes a middle record whose length grew (a flipped bit) so that it
//!   claims the rest of the file: the simulator found a follower that cut
//!   such a "tail" and dropped entries it had acknowledged (swarm seed 5405).
//!
//! The rule is conservative on purpose: mistaking a torn tail for corruption
//! costs a manual restart; mistaking corruption for a torn tail loses data.
//! Two limits follow from what a checksum alone can know:
//!
//! * Bit rot in the *last* record looks exactly like a torn write, so it is
//!   truncated. It is reported in [`Scan::torn_tail`] so the loss is visible
//!   in the logs; telling the two apart would need a separate commit marker,
//!   which this format does not have.
//! * A filesystem that persists later blocks of an in-flight write but not the
//!   block holding its header (possible under `data=writeback`) produces
//!   garbage followed by data, which is reported as corruption.

/// Bytes before a record's payload: length, checksum, kind.
pub const RECORD_HEADER_LEN: usize = 9;
/// Largest payload a record may carry. Larger lengths on disk are damage.
pub const MAX_RECORD_LEN: usize = 256 << 20;

/// Appends one record to `out`.
///
/// # Panics
///
/// If `payload` is longer than [`MAX_RECORD_LEN`]: writing a record that
/// [`scan`] would reject is a bug in the caller.
pub fn encode_record(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(RECORD_HEADER_LEN + payload.len());
    out.extend_from_slice(&record_header(kind, payload));
    out.extend_from_slice(payload);
}

/// The header of the record [`encode_record`] would write for `payload`,
/// for writers that send the payload from where it lies instead of
/// copying it (a snapshot's parts).
///
/// # Panics
///
/// As [`encode_record`].
pub fn record_header(kind: u8, payload: &[u8]) -> [u8; RECORD_HEADER_LEN] {
    assert!(
        payload.len() <= MAX_RECORD_LEN,
        "record payload of {} bytes exceeds MAX_RECORD_LEN ({MAX_RECORD_LEN})",
        payload.len()
    );
    let len = u32::try_from(payload.len()).expect("MAX_RECORD_LEN fits in u32");
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&checksum(kind, payload).to_le_bytes());
    h[8] = kind;
    h
}

/// The fields of a record header, for readers that take a large file a
/// record at a time instead of scanning it whole (a snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length as stored (unchecked: compare with
    /// [`MAX_RECORD_LEN`] and the file's length before reading it).
    pub len: u32,
    /// Stored checksum over kind and payload.
    pub crc: u32,
    /// Stored kind.
    pub kind: u8,
}

impl Header {
    /// Splits the header bytes into their fields.
    pub fn parse(bytes: [u8; RECORD_HEADER_LEN]) -> Header {
        let [l0, l1, l2, l3, c0, c1, c2, c3, kind] = bytes;
        Header {
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            crc: u32::from_le_bytes([c0, c1, c2, c3]),
            kind,
        }
    }

    /// Whether `payload` is the payload this header describes: its
    /// length and checksum match.
    pub fn matches(&self, payload: &[u8]) -> bool {
        payload.len() == self.len as usize && checksum(self.kind, payload) == self.crc
    }
}

/// One valid record found by [`scan`], borrowing from the scanned bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Byte offset of the record's header in the file.
    pub offset: u64,
    /// Caller-defined record kind.
    pub kind: u8,
    /// The payload, checksum verified.
    pub payload: &'a [u8],
}

/// Result of a successful [`scan`].
#[derive(Debug, PartialEq, Eq)]
pub struct Scan<'a> {
    /// Every valid record, in file order.
    pub records: Vec<Record<'a>>,
    /// Bytes to keep; the file must be truncated to this length before appending
    pub valid_len: u64,
    /// Set when the file ended in a torn or zero-filled record, which the
    /// caller should log before truncating to `valid_len`.
    pub torn_tail: Option<TornTail>,
}

/// The damaged end of a file left by a crash mid-write.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct TornTail {
    /// Offset of the first invalid record (equals [`Scan::valid_len`]).
    pub offset: u64,
    /// Bytes from `offset` to end of file that will be truncated away.
    pub discarded_bytes: u64,
    /// Why the record at `offset` is invalid.
    pub reason: &'static str,
}

/// An invalid record with valid-looking data after it: damage that a crash
/// cannot explain. See the module docs for why this is fatal.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
#[error("corrupt record at byte offset {offset}: {reason}; refusing to start so that no acknowledged data is silently dropped")]
pub struct CorruptRecord {
    /// Offset of the invalid record's header.
    pub offset: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// Reads every record of a file and applies the recovery rule of the module
/// docs: a damaged end is reported as [`Scan::torn_tail`], damage followed by
/// more data is a [`CorruptRecord`] error.
pub fn scan(bytes: &[u8]) -> Result<Scan<'_>, CorruptRecord> {
    let file_len = bytes.len() as u64;
    let mut records = Vec::new();
    let mut offset = 0usize;
    // Bounded: every iteration either returns or advances by at least
    // RECORD_HEADER_LEN bytes.
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        match parse_one(rest) {
            Ok((kind, payload)) => {
                records.push(Record {
                    offset: offset as u64,
                    kind,
                    payload,
                });
                offset += RECORD_HEADER_LEN + payload.len();
            }
            Err(invalid) => {
                let reaches_eof = invalid.claimed_end >= rest.len() as u64;
                let zero_filled = rest.iter().all(|&b| b == 0);
                if !(reaches_eof || zero_filled) {
                    return Err(CorruptRecord {
                        offset: offset as u64,
                        reason: invalid.detail,
                    });
                }
                // A grown length makes a damaged middle record claim the
                // rest of the file; the intact record after it gives it away.
                if let Some(next) = next_valid_record(rest) {
                    return Err(CorruptRecord {
                        offset: offset as u64,
                        reason: format!(
                            "{}, yet a valid record follows at byte offset {}",
                            invalid.detail,
                            offset + next
                        ),
                    });
                }
                let reason = if reaches_eof {
                    invalid.reason
                } else {
                    "zero-filled tail"
                };
                let torn = TornTail {
                    offset: offset as u64,
                    discarded_bytes: file_len - offset as u64,
                    reason,
                };
                return Ok(Scan {
                    records,
                    valid_len: offset as u64,
                    torn_tail: Some(torn),
                });
            }
        }
    }
    assert_eq!(offset, bytes.len(), "records never extend past the file");
    Ok(Scan {
        records,
        valid_len: file_len,
        torn_tail: None,
    })
}

/// Where the first valid record inside `rest` (after its first byte)
/// starts, if any. Cheap on real data: a length read from inside a JSON
/// payload or from garbage is almost always too large to check further.
fn next_valid_record(rest: &[u8]) -> Option<usize> {
    (1..rest.len()).find(|&start| parse_one(&rest[start..]).is_ok())
}

struct Invalid {
    /// Header plus claimed payload length, relative to the record's offset;
    /// `u64::MAX` when even the header is incomplete.
    claimed_end: u64,
    reason: &'static str,
    detail: String,
}

fn parse_one(rest: &[u8]) -> Result<(u8, &[u8]), Invalid> {
    let Some(header) = rest.first_chunk::<RECORD_HEADER_LEN>() else {
        return Err(Invalid {
            claimed_end: u64::MAX,
            reason: "incomplete header",
            detail: format!("incomplete header ({} of 9 bytes)", rest.len()),
        });
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let stored_crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let kind = header[8];
    let claimed_end = RECORD_HEADER_LEN as u64 + u64::from(len);
    // Lossless: usize is at least 32 bits on every target we build for.
    let len = len as usize;
    if len > MAX_RECORD_LEN {
        return Err(Invalid {
            claimed_end,
            reason: "length exceeds MAX_RECORD_LEN",
            detail: format!("length {len} exceeds MAX_RECORD_LEN ({MAX_RECORD_LEN})"),
        });
    }
    let Some(payload) = rest[RECORD_HEADER_LEN..].get(..len) else {
        return Err(Invalid {
            claimed_end,
            reason: "length overruns end of file",
            detail: format!(
                "length {len} overruns end of file ({} bytes left)",
                rest.len() - RECORD_HEADER_LEN
            ),
        });
    };
    let actual_crc = checksum(kind, payload);
    if actual_crc != stored_crc {
        return Err(Invalid {
            claimed_end,
            reason: "checksum mismatch",
            detail: format!(
                "checksum mismatch (stored {stored_crc:#010x}, computed {actual_crc:#010x})"
            ),
        });
    }
    Ok((kind, payload))
}

fn checksum(kind: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn headers_parse_and_check_their_payload() {
        let h = Header::parse(record_header(7, b"abc"));
        assert_eq!((h.len, h.kind), (3, 7));
        assert!(h.matches(b"abc"));
        assert!(!h.matches(b"abd"));
        assert!(!h.matches(b"abcd"));
        assert!(!Header { kind: 8, ..h }.matches(b"abc"));
    }

    fn file(records: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, payload) in records {
            encode_record(*kind, payload, &mut out);
        }
        out
    }

    fn rec(offset: u64, kind: u8, payload: &[u8]) -> Record<'_> {
        Record {
            offset,
            kind,
            payload,
        }
    }

    #[test]
    fn layout_is_len_crc_kind_payload() {
        let f = file(&[(7, b"abc")]);
        assert_eq!(&f[..4], &3u32.to_le_bytes());
        assert_eq!(&f[4..8], &crc32fast::hash(b"\x07abc").to_le_bytes());
        assert_eq!(f[8], 7);
        assert_eq!(&f[9..], b"abc");
    }

    #[test]
    fn empty_file_is_clean() {
        assert_eq!(
            scan(&[]),
            Ok(Scan {
                records: vec![],
                valid_len: 0,
                torn_tail: None
            })
        );
    }

    #[test]
    fn clean_file_yields_every_record() {
        let f = file(&[(1, b"one"), (2, b""), (3, b"three")]);
        assert_eq!(
            scan(&f),
            Ok(Scan {
                records: vec![rec(0, 1, b"one"), rec(12, 2, b""), rec(21, 3, b"three")],
                valid_len: f.len() as u64,
                torn_tail: None,
            })
        );
    }

    #[test]
    fn torn_header_is_truncated() {
        let mut f = file(&[(1, b"one")]);
        f.extend_from_slice(&file(&[(2, b"two")])[..5]);
        let s = scan(&f).unwrap();
        assert_eq!(s.records, vec![rec(0, 1, b"one")]);
        assert_eq!(s.valid_len, 12);
        assert_eq!(
            s.torn_tail,
            Some(TornTail {
                offset: 12,
                discarded_bytes: 5,
                reason: "incomplete header"
            })
        );
    }

    #[test]
    fn torn_payload_is_truncated() {
        let mut f = file(&[(1, b"one")]);
        f.extend_from_slice(&file(&[(2, b"twotwotwo")])[..12]);
        let s = scan(&f).unwrap();
        assert_eq!(s.records, vec![rec(0, 1, b"one")]);
        assert_eq!(s.valid_len, 12);
        assert_eq!(
            s.torn_tail,
            Some(TornTail {
                offset: 12,
                discarded_bytes: 12,
                reason: "length overruns end of file"
            })
        );
    }

    #[test]
    fn bad_checksum_on_last_record_is_a_torn_tail() {
        let mut f = file(&[(1, b"one"), (2, b"two")]);
        let last = f.len() - 1;
        f[last] ^= 0x40;
        let s = scan(&f).unwrap();
        assert_eq!(s.records, vec![rec(0, 1, b"one")]);
        assert_eq!(s.valid_len, 12);
        assert_eq!(
            s.torn_tail,
            Some(TornTail {
                offset: 12,
                discarded_bytes: 12,
                reason: "checksum mismatch"
            })
        );
    }

    #[test]
    fn zero_filled_tail_is_truncated() {
        // Long enough that a zero header's claimed extent (9 bytes) ends
        // before end of file: only the all-zero rule makes it a torn tail.
        let mut f = file(&[(1, b"one")]);
        f.resize(f.len() + 4096, 0);
        let s = scan(&f).unwrap();
        assert_eq!(s.records, vec![rec(0, 1, b"one")]);
        assert_eq!(s.valid_len, 12);
        assert_eq!(
            s.torn_tail,
            Some(TornTail {
                offset: 12,
                discarded_bytes: 4096,
                reason: "zero-filled tail"
            })
        );
    }

    #[test]
    fn grown_length_in_a_middle_record_is_corruption_not_a_torn_tail() {
        let mut f = file(&[(1, b"one"), (2, b"two")]);
        // The first record now claims 0x01000003 bytes: past end of file.
        f[3] = 1;
        let err = scan(&f).unwrap_err();
        assert_eq!(err.offset, 0);
        assert!(
            err.reason
                .contains("valid record follows at byte offset 12"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn oversized_length_reaching_past_eof_is_a_torn_tail() {
        let mut f = file(&[(1, b"one")]);
        f.extend_from_slice(&u32::MAX.to_le_bytes());
        f.extend_from_slice(&[0xAB; 20]);
        let s = scan(&f).unwrap();
        assert_eq!(s.valid_len, 12);
        assert_eq!(
            s.torn_tail.map(|t| t.reason),
            Some("length exceeds MAX_RECORD_LEN")
        );
    }

    #[test]
    fn bit_flip_in_a_middle_record_is_corruption_at_its_offset() {
        let mut f = file(&[(1, b"one"), (2, b"two"), (3, b"three")]);
        f[12 + 10] ^= 0x01; // payload of the second record
        let err = scan(&f).unwrap_err();
        assert_eq!(err.offset, 12);
        assert!(err.reason.starts_with("checksum mismatch"), "{err}");
        assert!(err.to_string().contains("refusing to start"));
    }

    #[test]
    fn flipped_kind_in_a_middle_record_is_corruption() {
        let mut f = file(&[(1, b"one"), (2, b"two"), (3, b"three")]);
        f[12 + 8] ^= 0x80;
        assert_eq!(scan(&f).unwrap_err().offset, 12);
    }

    #[test]
    fn shrunken_length_in_a_middle_record_is_corruption() {
        let mut f = file(&[(1, b"one"), (2, b"two")]);
        f[0] = 2;
        let err = scan(&f).unwrap_err();
        assert_eq!(err.offset, 0);
    }

    #[test]
    fn zeros_followed_by_data_are_corruption() {
        let mut f = file(&[(1, b"one")]);
        f.resize(f.len() + 64, 0);
        f.extend_from_slice(&file(&[(2, b"two")]));
        let err = scan(&f).unwrap_err();
        assert_eq!(err.offset, 12);
    }

    #[test]
    #[should_panic(expected = "exceeds MAX_RECORD_LEN")]
    fn encoding_an_oversized_record_is_a_bug() {
        encode_record(0, &vec![0; MAX_RECORD_LEN + 1], &mut Vec::new());
    }

    fn records_strategy() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
        prop::collection::vec(
            (any::<u8>(), prop::collection::vec(any::<u8>(), 0..48)),
            0..8,
        )
    }

    /// Encodes `recs` and returns the file with each record's offset.
    fn encode_all(recs: &[(u8, Vec<u8>)]) -> (Vec<u8>, Vec<u64>) {
        let mut f = Vec::new();
        let mut offsets = Vec::new();
        for (kind, payload) in recs {
            offsets.push(f.len() as u64);
            encode_record(*kind, payload, &mut f);
        }
        (f, offsets)
    }

    fn expected<'a>(recs: &'a [(u8, Vec<u8>)], offsets: &[u64]) -> Vec<Record<'a>> {
        recs.iter()
            .zip(offsets)
            .map(|((kind, payload), &offset)| rec(offset, *kind, payload))
            .collect()
    }

    proptest! {
        #[test]
        fn truncation_anywhere_keeps_exactly_the_whole_records(recs in records_strategy()) {
            let (f, offsets) = encode_all(&recs);
            for cut in 0..=f.len() {
                let s = scan(&f[..cut]).expect("a truncated file is never corrupt");
                let whole = offsets
                    .iter()
                    .zip(&recs)
                    .take_while(|(&o, (_, p))| o as usize + RECORD_HEADER_LEN + p.len() <= cut)
                    .count();
                prop_assert_eq!(&s.records, &expected(&recs[..whole], &offsets[..whole]));
                let boundary = offsets.get(whole).copied().unwrap_or(f.len() as u64);
                prop_assert_eq!(s.valid_len, boundary.min(cut as u64));
                match &s.torn_tail {
                    None => prop_assert_eq!(s.valid_len, cut as u64),
                    Some(t) => {
                        prop_assert_eq!(t.offset, s.valid_len);
                        prop_assert_eq!(t.discarded_bytes, cut as u64 - s.valid_len);
                        prop_assert!(t.discarded_bytes > 0);
                    }
                }
            }
        }

        #[test]
        fn a_flipped_bit_in_a_non_last_record_is_never_accepted(
            recs in records_strategy().prop_filter("need two records", |r| r.len() >= 2),
            which in any::<prop::sample::Index>(),
            bit in any::<prop::sample::Index>(),
        ) {
            let (mut f, offsets) = encode_all(&recs);
            let k = which.index(recs.len() - 1);
            let start = offsets[k] as usize;
            let end = offsets[k + 1] as usize;
            let bit = bit.index((end - start) * 8);
            f[start + bit / 8] ^= 1 << (bit % 8);

            // Never mistaken for a torn tail, not even a grown length that
            // claims the rest of the file: the intact records after it
            // would be silently dropped.
            match scan(&f) {
                Err(err) => prop_assert_eq!(err.offset, offsets[k]),
                Ok(s) => prop_assert!(false, "damage before record {} read as {:?}", k + 1, s.torn_tail),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(s) = scan(&bytes) {
                prop_assert!(s.valid_len <= bytes.len() as u64);
                let end = s.records.last().map_or(0, |r| r.offset + (RECORD_HEADER_LEN + r.payload.len()) as u64);
                prop_assert_eq!(end, s.valid_len);
            }
        }
    }
}
