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

    /// True once every byte was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The next `n` bytes, or an error naming `what` if fewer remain.
    pub(crate) fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "at byte {}: {} needs {n} bytes but only {} remain (truncated, or a damaged length)",
                self.offset(),
                what(),
                self.remaining()
            ));
        }
        let taken = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(taken)
    }

    /// A reader over the next `n` bytes, which this reader skips.
    pub(crate) fn sub(
        &mut self,
        n: usize,
        what: &dyn Fn() -> String,
    ) -> Result<Reader<'a>, String> {
        let base = self.offset();
        Ok(Reader::new(self.take(n, what)?, base))
    }

    /// One byte.
    pub(crate) fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    /// A little-endian `u32`.
    pub(crate) fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("took 4 bytes")))
    }

    /// A little-endian `u64`.
    pub(crate) fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, String> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("took 8 bytes")))
    }

    /// A `u32`-length-prefixed byte string, borrowed from the input.
    pub(crate) fn bytes32(&mut self, what: &dyn Fn() -> String) -> Result<&'a [u8], String> {
        let len = self.u32(&|| format!("length of {}", what()))?;
        // A u32 always fits a usize on the 32- and 64-bit targets we build;
        // `take` checks it against the remaining bytes before slicing.
        let len = usize::try_from(len).map_err(|_| format!("{} is too long", what()))?;
        self.take(len, what)
    }

    /// A `u32`-length-prefixed UTF-8 string, borrowed from the input.
    pub(crate) fn str32(&mut self, what: &dyn Fn() -> String) -> Result<&'a str, String> {
        let start = self.offset();
        let bytes = self.bytes32(what)?;
        std::str::from_utf8(bytes)
            .map_err(|e| format!("at byte {start}: {} is not UTF-8 ({e})", what()))
    }

    /// Fails if any byte is left: a body must be exactly as long as its
    /// header says, or something upstream miscounted.
    pub(crate) fn finish(&self, what: &str) -> Result<(), String> {
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
        assert_eq!(r.u8(&what), Ok(7));
        assert_eq!(r.u32(&what), Ok(0xdead_beef));
        assert_eq!(r.u64(&what), Ok(u64::MAX - 1));
        assert_eq!(r.bytes32(&what), Ok(&b"\x00\xff"[..]));
        assert_eq!(r.str32(&what), Ok("é"));
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
        let err = r.str32(&what).unwrap_err();
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
    fn sub_reader_reports_absolute_offsets() {
        let input = [0u8; 6];
        let mut r = Reader::new(&input, 10);
        r.take(2, &what).unwrap();
        let mut sub = r.sub(3, &what).unwrap();
        assert_eq!(sub.offset(), 12);
        assert_eq!(r.remaining(), 1);
        let err = sub.u64(&what).unwrap_err();
        assert!(err.starts_with("at byte 12:"), "{err}");
    }
}
