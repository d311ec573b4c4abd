//! Length-prefixed frame codec for RPC over TCP.
//!
//! A frame on the wire is
//!
//! ```text
//! [len: u32 BE][version: u8 = 1][crc32 of payload: u32 BE][payload]
//!  \__ LEN_PREFIX __/\_____________ body: `len` bytes _____________/
//! ```
//!
//! `len` counts everything after itself, so a reader can take the 4-byte
//! prefix, check it with [`decode_len`] *before* allocating, read exactly
//! `len` more bytes and hand them to [`decode_body`]. Byte-chunk readers use
//! [`FrameDecoder`] instead, which does the same incrementally.
//!
//! Every [`FrameError`] means the byte stream can no longer be trusted (the
//! peer is misbehaving, runs an incompatible release, or the stream was
//! damaged). There is no resynchronisation: the caller drops the connection.

/// The only frame version this build reads and writes.
pub const FRAME_VERSION: u8 = 1;
/// Upper bound on a frame's body (`len`), checked before anything is buffered,
/// so a hostile length prefix cannot make us allocate gigabytes.
pub const MAX_FRAME_LEN: usize = 64 << 20;
/// Size of the big-endian length prefix.
pub const LEN_PREFIX: usize = 4;
/// Version byte plus checksum: the part of the body before the payload.
const BODY_HEADER_LEN: usize = 1 + 4;
/// Largest payload [`encode_frame`] accepts.
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN - BODY_HEADER_LEN;

/// Why a frame was rejected. Each variant means the same thing to the caller:
/// the stream is unusable, drop the peer's connection.
#[derive(thiserror::Error, Debug, PartialEq, Eq, Clone)]
pub enum FrameError {
    /// The length prefix announces a body larger than [`MAX_FRAME_LEN`].
    #[error(
        "frame body of {len} bytes exceeds the {max}-byte limit; the peer is misbehaving \
         or not speaking this protocol, drop its connection"
    )]
    TooLarge {
        /// Body length announced by the prefix.
        len: usize,
        /// The limit, [`MAX_FRAME_LEN`].
        max: usize,
    },
    /// The body cannot even hold the version byte and checksum.
    #[error(
        "frame body of {len} bytes is shorter than its 5-byte version and checksum header; \
         the peer is misbehaving, drop its connection"
    )]
    TooShort {
        /// Body length announced by the prefix.
        len: usize,
    },
    /// The peer speaks a frame version this build does not know.
    #[error(
        "unsupported frame version {0} (this build speaks version 1); the peer runs an \
         incompatible release, drop its connection"
    )]
    UnsupportedVersion(u8),
    /// The payload does not hash to the checksum carried in the frame.
    #[error(
        "frame checksum mismatch (frame carries {expected:#010x}, payload hashes to \
         {actual:#010x}); the stream is corrupt, drop the peer's connection"
    )]
    ChecksumMismatch {
        /// Checksum carried in the frame.
        expected: u32,
        /// Checksum computed over the received payload.
        actual: u32,
    },
}

/// Appends one frame carrying `payload` to `out`.
///
/// # Panics
///
/// If `payload` is longer than [`MAX_PAYLOAD_LEN`]: producing a frame no peer
/// would accept is a bug in the caller, which must split or refuse such
/// messages before they reach the codec.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    assert!(
        payload.len() <= MAX_PAYLOAD_LEN,
        "frame payload of {} bytes exceeds MAX_PAYLOAD_LEN ({MAX_PAYLOAD_LEN})",
        payload.len()
    );
    let body_len = BODY_HEADER_LEN + payload.len();
    let body_len_u32 = u32::try_from(body_len).expect("MAX_FRAME_LEN fits in u32");
    out.reserve(LEN_PREFIX + body_len);
    out.extend_from_slice(&body_len_u32.to_be_bytes());
    out.push(FRAME_VERSION);
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Decodes a length prefix: the number of body bytes that follow it.
///
/// Call this before reading (or allocating for) the body.
pub fn decode_len(prefix: [u8; LEN_PREFIX]) -> Result<usize, FrameError> {
    // Lossless: usize is at least 32 bits on every target we build for.
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if len < BODY_HEADER_LEN {
        return Err(FrameError::TooShort { len });
    }
    Ok(len)
}

/// Validates a frame body (everything after the length prefix) and returns
/// its payload.
pub fn decode_body(body: &[u8]) -> Result<&[u8], FrameError> {
    if body.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: MAX_FRAME_LEN,
        });
    }
    if body.len() < BODY_HEADER_LEN {
        return Err(FrameError::TooShort { len: body.len() });
    }
    let version = body[0];
    if version != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let expected = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
    let payload = &body[BODY_HEADER_LEN..];
    let actual = crc32fast::hash(payload);
    if expected != actual {
        return Err(FrameError::ChecksumMismatch { expected, actual });
    }
    Ok(payload)
}

/// Incremental decoder for a byte stream that arrives in arbitrary chunks.
///
/// Use: after every [`push`](Self::push), call
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)`. Driven that
/// way, the decoder never holds more than one incomplete frame (at most
/// [`LEN_PREFIX`] + [`MAX_FRAME_LEN`] bytes) plus the last chunk pushed,
/// because an oversized length prefix is rejected as soon as its 4 bytes are
/// in.
///
/// **Poisoning:** once `next_frame` has returned an error, the decoder is
/// poisoned: it drops its buffer, ignores further pushes and returns the same
/// error from every later `next_frame`. A framing error leaves no trustworthy
/// frame boundary to resume from, so the only correct reaction is to close the
/// connection; poisoning makes a caller that forgets that fail loudly instead
/// of parsing garbage.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as frames; compacted on `push` so a
    /// burst of small frames costs linear, not quadratic, copying.
    consumed: usize,
    poisoned: Option<FrameError>,
}

impl FrameDecoder {
    /// An empty decoder, positioned at a frame boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the peer. Ignored once poisoned.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.poisoned.is_some() {
            return;
        }
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Returns the next complete frame's payload, `Ok(None)` if more bytes are
    /// needed, or the error that poisoned the decoder (see the type docs).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        match self.try_frame() {
            Ok(frame) => Ok(frame),
            Err(err) => {
                self.poisoned = Some(err.clone());
                self.buf = Vec::new();
                self.consumed = 0;
                Err(err)
            }
        }
    }

    /// Bytes received but not yet returned as frames (0 once poisoned).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.consumed
    }

    fn try_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let pending = &self.buf[self.consumed..];
        let Some(prefix) = pending.first_chunk::<LEN_PREFIX>() else {
            return Ok(None);
        };
        let body_len = decode_len(*prefix)?;
        let Some(body) = pending[LEN_PREFIX..].get(..body_len) else {
            return Ok(None);
        };
        let payload = decode_body(body)?.to_vec();
        self.consumed += LEN_PREFIX + body_len;
        assert!(self.consumed <= self.buf.len());
        Ok(Some(payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(payload, &mut out);
        out
    }

    /// Feeds `bytes` in the given chunk sizes (cycled; 0 is read as 1) and
    /// drains after every push, as a driver does. Returns the frames and the
    /// first error, if any.
    fn feed(bytes: &[u8], chunk_sizes: &[usize]) -> (Vec<Vec<u8>>, Option<FrameError>) {
        let mut dec = FrameDecoder::new();
        let mut frames = Vec::new();
        let mut rest = bytes;
        let mut sizes = chunk_sizes.iter().copied().cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
            dec.push(&rest[..n]);
            rest = &rest[n..];
            // Bounded: each returned frame consumes at least 9 bytes.
            for _ in 0..=bytes.len() {
                match dec.next_frame() {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => return (frames, Some(e)),
                }
            }
        }
        (frames, None)
    }

    #[test]
    fn layout_is_len_version_crc_payload() {
        let f = frame(b"hi");
        assert_eq!(&f[..4], &7u32.to_be_bytes());
        assert_eq!(f[4], FRAME_VERSION);
        assert_eq!(&f[5..9], &crc32fast::hash(b"hi").to_be_bytes());
        assert_eq!(&f[9..], b"hi");
    }

    #[test]
    fn empty_payload_round_trips() {
        let f = frame(b"");
        assert_eq!(f.len(), LEN_PREFIX + BODY_HEADER_LEN);
        assert_eq!(decode_len(f[..4].try_into().unwrap()), Ok(5));
        assert_eq!(decode_body(&f[4..]), Ok(&b""[..]));
    }

    #[test]
    fn decode_len_bounds() {
        assert_eq!(
            decode_len(((MAX_FRAME_LEN + 1) as u32).to_be_bytes()),
            Err(FrameError::TooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            })
        );
        assert_eq!(
            decode_len((MAX_FRAME_LEN as u32).to_be_bytes()),
            Ok(MAX_FRAME_LEN)
        );
        assert_eq!(
            decode_len(4u32.to_be_bytes()),
            Err(FrameError::TooShort { len: 4 })
        );
        assert_eq!(
            decode_len(u32::MAX.to_be_bytes()),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                max: MAX_FRAME_LEN
            })
        );
    }

    #[test]
    fn decode_body_rejects_bad_version_and_checksum() {
        let mut f = frame(b"payload");
        f[4] = 2;
        assert_eq!(decode_body(&f[4..]), Err(FrameError::UnsupportedVersion(2)));

        let mut f = frame(b"payload");
        f[9] ^= 1;
        assert_eq!(
            decode_body(&f[4..]),
            Err(FrameError::ChecksumMismatch {
                expected: crc32fast::hash(b"payload"),
                actual: crc32fast::hash(b"qayload"),
            })
        );
        assert_eq!(decode_body(&[1, 0]), Err(FrameError::TooShort { len: 2 }));
    }

    #[test]
    #[should_panic(expected = "exceeds MAX_PAYLOAD_LEN")]
    fn encoding_an_oversized_payload_is_a_bug() {
        encode_frame(&vec![0; MAX_PAYLOAD_LEN + 1], &mut Vec::new());
    }

    #[test]
    fn decoder_waits_for_whole_frame_then_yields_it() {
        let f = frame(b"abc");
        let mut dec = FrameDecoder::new();
        for (i, b) in f.iter().enumerate() {
            assert_eq!(dec.next_frame(), Ok(None));
            assert_eq!(dec.buffered(), i);
            dec.push(&[*b]);
        }
        assert_eq!(dec.next_frame(), Ok(Some(b"abc".to_vec())));
        assert_eq!(dec.buffered(), 0);
        assert_eq!(dec.next_frame(), Ok(None));
    }

    #[test]
    fn decoder_rejects_oversized_prefix_before_buffering_body() {
        let mut dec = FrameDecoder::new();
        dec.push(&u32::MAX.to_be_bytes());
        assert!(matches!(dec.next_frame(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn decoder_stays_poisoned_after_an_error() {
        let mut bytes = frame(b"good");
        let mut bad = frame(b"bad");
        bad[4] = 9;
        bytes.extend_from_slice(&bad);
        let mut dec = FrameDecoder::new();
        dec.push(&bytes);
        assert_eq!(dec.next_frame(), Ok(Some(b"good".to_vec())));
        let err = FrameError::UnsupportedVersion(9);
        assert_eq!(dec.next_frame(), Err(err.clone()));
        assert_eq!(dec.buffered(), 0);
        dec.push(&frame(b"later"));
        assert_eq!(dec.buffered(), 0);
        assert_eq!(dec.next_frame(), Err(err));
    }

    proptest! {
        #[test]
        fn round_trip_in_arbitrary_chunks(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
            chunks in prop::collection::vec(1usize..64, 1..16),
        ) {
            let mut bytes = Vec::new();
            for p in &payloads {
                encode_frame(p, &mut bytes);
            }
            let (frames, err) = feed(&bytes, &chunks);
            prop_assert_eq!(err, None);
            prop_assert_eq!(frames, payloads);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
            chunks in prop::collection::vec(0usize..64, 1..8),
        ) {
            let (_frames, err) = feed(&bytes, &chunks);
            // Direct API too.
            if let Some(prefix) = bytes.first_chunk::<4>() {
                let _ = decode_len(*prefix);
            }
            let _ = decode_body(&bytes);
            if let Some(err) = err {
                // Poisoned decoders repeat their error.
                let mut dec = FrameDecoder::new();
                dec.push(&bytes);
                let mut first = None;
                for _ in 0..=bytes.len() {
                    match dec.next_frame() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => { first = Some(e); break; }
                    }
                }
                prop_assert_eq!(first.as_ref(), Some(&err));
                prop_assert_eq!(dec.next_frame(), Err(err));
            }
        }

        #[test]
        fn a_flipped_bit_never_yields_a_wrong_payload(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..5),
            bit in any::<prop::sample::Index>(),
            chunks in prop::collection::vec(1usize..32, 1..8),
        ) {
            let mut bytes = Vec::new();
            let mut frame_of_byte = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                let before = bytes.len();
                encode_frame(p, &mut bytes);
                frame_of_byte.resize(bytes.len(), i);
                prop_assert!(bytes.len() > before);
            }
            let bit = bit.index(bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            let damaged = frame_of_byte[bit / 8];

            let (frames, err) = feed(&bytes, &chunks);
            // Frames before the damaged one come through intact; the damaged
            // one is never accepted (the decoder errors, or waits for bytes a
            // grown length prefix now promises).
            prop_assert_eq!(&frames[..], &payloads[..damaged]);
            // A flip inside a payload or checksum is always caught (CRC-32
            // detects every single-bit error); only a flipped length may
            // leave the decoder waiting instead.
            let offset_in_frame = bit / 8 - frame_of_byte.iter().position(|&f| f == damaged).unwrap();
            if offset_in_frame >= LEN_PREFIX {
                prop_assert!(err.is_some());
            }
        }
    }
}
