//! The fixed-width, little-endian, length-prefixed encoding of snapshot
//! bodies: integers as `u8`/`u32`/`u64` LE, byte strings and strings as a
//! `u32` length followed by the bytes.
//!
//! The [`Reader`] is where hostile input meets the state machine: every
//! length is checked against the bytes that remain *before* anything is
//! sliced or allocated, so a forged length costs an error, not a panic or a
//! multi-gigabyte allocation. Errors name the absolute byte offset and what
//! was being read, so "damaged at byte 812 (value of key \"a/b\")" can be
//! matched against a hex dump.

/// Appends `v`.
pub(crate) fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

/// Appends `v` little-endian.
pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends `v` little-endian.
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends `bytes` with a `u32` length prefix.
///
/// # Panics
///
/// If `bytes` is 4 GiB or longer. Everything in the state arrived in a Raft
/// log entry, and an entry travels in one frame (`codec::MAX_PAYLOAD_LEN`,
/// far below 4 GiB), so a longer string is a bug upstream, not input.
pub(crate) fn put_bytes32(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("state strings are shorter than 4 GiB");
    put_u32(out, len);
    out.extend_from_slice(bytes);
}

/// A cursor over untrusted bytes. Every method either consumes exactly
/// what it returns or fails without consuming anything useful (the caller
/// gives up on the whole snapshot).
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Offset of `bytes[0]` in the whole snapshot, for error messages.
    base: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`, which start at offset `base` of the snapshot.
    pub(crate) fn new(bytes: &'a [u8], base: usize) -> Self {
        Self {
            bytes,
            pos: 0,
            base,
        }
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// Absolute offset of the next byte, for error messages.
    pub(crate) fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// The next `n` bytes, or an error naming `what` if fewer remain.
    pub(crate) fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(overrun(self.offset(), n, self.remaining(), what));
        }
        let taken = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(taken)
    }

    /// A little-endian `u32`.
    pub(crate) fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("took 4 bytes")))
    }

    /// A `u32`-length-prefixed byte string, borrowed from the input.
    pub(crate) fn bytes32(&mut self, what: &dyn Fn() -> String) -> Result<&'a [u8], String> {
        let len = self.u32(&|| format!("length of {}", what()))?;
        // A u32 always fits a usize on the 32- and 64-bit targets we build;
        // `take` checks it against the remaining bytes before slicing.
        let len = usize::try_from(len).map_err(|_| format!("{} is too long", what()))?;
        self.take(len, what)
    }

    /// Fails if any byte is left: a body must be exactly as long as its
    /// header says, or something upstream miscounted.
    pub(crate) fn finish(&self, what: &str) -> Result<(), String> {
        self.finish_input(what)
    }
}

/// What a table decoder reads from: a slice ([`Reader`]) or a stream
/// ([`StreamReader`], a snapshot section read from disk a piece at a time).
/// Every read is checked against [`Input::remaining`] before anything is
/// allocated, so a forged length costs an error, not memory.
pub(crate) trait Input {
    /// Bytes not yet read.
    fn remaining(&self) -> usize;
    /// Absolute offset of the next byte, for error messages.
    fn offset(&self) -> usize;
    /// The next `buf.len()` bytes, or an error naming `what` if fewer remain.
    fn fill(&mut self, buf: &mut [u8], what: &dyn Fn() -> String) -> Result<(), String>;

    /// True once every byte was read.
    fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The next `n` bytes as a new vector, checked against what remains
    /// before the vector is allocated.
    fn vec(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<Vec<u8>, String> {
        if n > self.remaining() {
            return Err(overrun(self.offset(), n, self.remaining(), what));
        }
        let mut out = vec![0; n];
        self.fill(&mut out, what)?;
        Ok(out)
    }

    /// A little-endian `u64`.
    fn u64_le(&mut self, what: &dyn Fn() -> String) -> Result<u64, String> {
        let mut b = [0; 8];
        self.fill(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A `u32`-length-prefixed byte string.
    fn vec32(&mut self, what: &dyn Fn() -> String) -> Result<Vec<u8>, String> {
        let mut b = [0; 4];
        self.fill(&mut b, &|| format!("length of {}", what()))?;
        let len = usize::try_from(u32::from_le_bytes(b))
            .map_err(|_| format!("{} is too long", what()))?;
        self.vec(len, what)
    }

    /// A `u32`-length-prefixed UTF-8 string.
    fn string32(&mut self, what: &dyn Fn() -> String) -> Result<String, String> {
        let start = self.offset();
        String::from_utf8(self.vec32(what)?)
            .map_err(|e| format!("at byte {start}: {} is not UTF-8 ({e})", what()))
    }

    /// Fails if any byte is left (see [`Reader::finish`]).
    fn finish_input(&self, what: &str) -> Result<(), String> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "at byte {}: {} unexpected trailing bytes after {what}",
                self.offset(),
                self.remaining()
            ))
        }
    }
}

fn overrun(offset: usize, n: usize, remaining: usize, what: &dyn Fn() -> String) -> String {
    format!(
        "at byte {offset}: {} needs {n} bytes but only {remaining} remain (truncated, or a \
         damaged length)",
        what()
    )
}

impl Input for Reader<'_> {
    fn remaining(&self) -> usize {
        Reader::remaining(self)
    }

    fn offset(&self) -> usize {
        Reader::offset(self)
    }

    fn fill(&mut self, buf: &mut [u8], what: &dyn Fn() -> String) -> Result<(), String> {
        buf.copy_from_slice(self.take(buf.len(), what)?);
        Ok(())
    }
}

/// Reads `len` bytes of a snapshot from a stream, never more: the bytes a
/// section or a whole snapshot announces, read from a file or a transfer
/// piece by piece, so a gigabyte of state is never one buffer.
pub(crate) struct StreamReader<'r> {
    source: &'r mut dyn std::io::Read,
    remaining: usize,
    offset: usize,
}

impl<'r> StreamReader<'r> {
    /// A reader of the next `len` bytes of `source`, which start at offset
    /// `base` of the snapshot.
    pub(crate) fn new(source: &'r mut dyn std::io::Read, len: usize, base: usize) -> Self {
        StreamReader {
            source,
            remaining: len,
            offset: base,
        }
    }

    /// A reader of the next `n` bytes, which this reader counts as read:
    /// the caller reads the section to its end (or gives up on the whole
    /// snapshot). Fails if fewer than `n` remain.
    pub(crate) fn section(
        &mut self,
        n: usize,
        what: &dyn Fn() -> String,
    ) -> Result<StreamReader<'_>, String> {
        if n > self.remaining {
            return Err(overrun(self.offset, n, self.remaining, what));
        }
        let base = self.offset;
        self.remaining -= n;
        self.offset += n;
        Ok(StreamReader::new(&mut *self.source, n, base))
    }
}

impl Input for StreamReader<'_> {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn offset(&self) -> usize {
        self.offset
    }

    fn fill(&mut self, buf: &mut [u8], what: &dyn Fn() -> String) -> Result<(), String> {
        if buf.len() > self.remaining {
            return Err(overrun(self.offset, buf.len(), self.remaining, what));
        }
        self.source
            .read_exact(buf)
            .map_err(|e| format!("at byte {}: reading {}: {e}", self.offset, what()))?;
        self.remaining -= buf.len();
        self.offset += buf.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn what() -> String {
        "the thing".into()
    }

    #[test]
    fn round_trips_every_shape() {
        let mut out = Vec::new();
        put_u8(&mut out, 7);
        put_u32(&mut out, 0xdead_beef);
        put_u64(&mut out, u64::MAX - 1);
        put_bytes32(&mut out, b"\x00\xff");
        put_bytes32(&mut out, "é".as_bytes());
        assert_eq!(out.len(), 1 + 4 + 8 + (4 + 2) + (4 + 2));
        let mut r = Reader::new(&out, 0);
        assert_eq!(r.take(1, &what), Ok(&[7u8][..]));
        assert_eq!(r.u32(&what), Ok(0xdead_beef));
        assert_eq!(r.u64_le(&what), Ok(u64::MAX - 1));
        assert_eq!(r.bytes32(&what), Ok(&b"\x00\xff"[..]));
        assert_eq!(r.string32(&what), Ok("é".to_string()));
        assert!(r.is_empty());
        assert_eq!(r.finish("all"), Ok(()));
    }

    #[test]
    fn little_endian_on_the_wire() {
        let mut out = Vec::new();
        put_u32(&mut out, 1);
        put_u64(&mut out, 2);
        assert_eq!(out, [1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    }

    /// A length claiming 4 GiB in a 10-byte input is refused by comparing
    /// it with what remains, before any slice or allocation.
    #[test]
    fn hostile_length_is_refused_with_the_offset() {
        let mut input = vec![0xAA; 3];
        input.extend_from_slice(&u32::MAX.to_le_bytes());
        input.extend_from_slice(b"abc");
        let mut r = Reader::new(&input, 100);
        r.take(3, &what).unwrap();
        let err = r.bytes32(&what).unwrap_err();
        assert!(err.contains("at byte 107"), "{err}");
        assert!(
            err.contains("needs 4294967295 bytes but only 3 remain"),
            "{err}"
        );
    }

    #[test]
    fn bad_utf8_and_trailing_bytes_are_errors() {
        let mut out = Vec::new();
        put_bytes32(&mut out, b"\xff\xfe");
        out.push(0);
        let mut r = Reader::new(&out, 0);
        let err = r.string32(&what).unwrap_err();
        assert!(err.contains("the thing is not UTF-8"), "{err}");

        let mut r = Reader::new(&out, 0);
        r.bytes32(&what).unwrap();
        let err = r.finish("the body").unwrap_err();
        assert!(
            err.contains("1 unexpected trailing bytes after the body"),
            "{err}"
        );
    }

    #[test]
    fn stream_sections_report_absolute_offsets() {
        let input = [0u8; 6];
        let mut source = &input[..];
        let mut r = StreamReader::new(&mut source, 6, 10);
        r.vec(2, &what).unwrap();
        {
            let mut section = r.section(3, &what).unwrap();
            assert_eq!(section.offset(), 12);
            let err = section.u64_le(&what).unwrap_err();
            assert!(err.starts_with("at byte 12:"), "{err}");
        }
        assert_eq!(r.remaining(), 1);
        assert_eq!(r.offset(), 15);
        let err = r.section(2, &what).map(|_| ()).unwrap_err();
        assert!(err.contains("needs 2 bytes but only 1 remain"), "{err}");
    }

    /// A stream that ends before the length it announced is an error that
    /// names the offset, as a short slice is.
    #[test]
    fn short_stream_is_an_error() {
        let input = [1u8, 0, 0, 0];
        let mut source = &input[..];
        let mut r = StreamReader::new(&mut source, 8, 0);
        let err = r.u64_le(&what).unwrap_err();
        assert!(err.starts_with("at byte 0: reading the thing"), "{err}");
    }
}
