//! A bounds-checked little-endian reader over a byte slice.
//!
//! Positions are absolute offsets into the whole file so that error messages can
//! point at the exact byte; `end` limits the cursor to the current section or entry.

use crate::FormatError;

/// Reads little-endian values from `buf[pos..end]`, never past `end`.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
    label: &'a str,
    section: &'static str,
}

impl<'a> Cursor<'a> {
    /// A cursor over `buf[start..end]`; `section` names the region in messages.
    /// Fails if the range does not lie within `buf`.
    pub(crate) fn new(
        buf: &'a [u8],
        start: u64,
        end: u64,
        label: &'a str,
        section: &'static str,
    ) -> Result<Self, FormatError> {
        let bad = || FormatError::Corrupt {
            path: label.to_string(),
            offset: start,
            reason: format!("the {section} (bytes {start}..{end}) does not lie within the file"),
        };
        let s = usize::try_from(start).map_err(|_| bad())?;
        let e = usize::try_from(end).map_err(|_| bad())?;
        if s > e || e > buf.len() {
            return Err(bad());
        }
        Ok(Cursor {
            buf,
            pos: s,
            end: e,
            label,
            section,
        })
    }

    /// Splits off the next `len` bytes as a cursor of their own and advances past them.
    pub(crate) fn split(
        &mut self,
        len: u64,
        section: &'static str,
    ) -> Result<Cursor<'a>, FormatError> {
        if len > self.remaining() {
            return Err(self.error(format!(
                "a {section} of {len} bytes runs past the end of the {} ({} bytes left)",
                self.section,
                self.remaining()
            )));
        }
        let start = self.pos as u64;
        // len <= remaining, so start + len <= end <= buf.len(): no overflow, and the range is valid.
        let sub = Cursor::new(self.buf, start, start + len, self.label, section)?;
        self.pos = sub.end;
        Ok(sub)
    }

    /// Current absolute offset.
    pub(crate) fn pos(&self) -> u64 {
        self.pos as u64
    }

    /// Bytes left before `end`.
    pub(crate) fn remaining(&self) -> u64 {
        (self.end - self.pos) as u64
    }

    /// A `Corrupt` error at the current position.
    pub(crate) fn error(&self, reason: String) -> FormatError {
        self.error_at(self.pos as u64, reason)
    }

    /// A `Corrupt` error at `offset`.
    pub(crate) fn error_at(&self, offset: u64, reason: String) -> FormatError {
        FormatError::Corrupt {
            path: self.label.to_string(),
            offset,
            reason,
        }
    }

    /// Takes the next `n` bytes; `what` names them in the error.
    pub(crate) fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], FormatError> {
        if n > self.remaining() {
            return Err(self.error(format!(
                "{what} ({n} bytes) runs past the end of the {} ({} bytes left)",
                self.section,
                self.remaining()
            )));
        }
        let start = self.pos;
        let stop = start + n as usize;
        let bytes = self
            .buf
            .get(start..stop)
            .ok_or_else(|| self.error(format!("{what} lies outside the file")))?;
        self.pos = stop;
        Ok(bytes)
    }

    /// Takes exactly `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], FormatError> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Reads a `u8`.
    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, FormatError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// Reads a little-endian `u16`.
    pub(crate) fn u16(&mut self, what: &str) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    /// Reads a little-endian `u32`.
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// Reads a little-endian `u64`.
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads a string: `u64` byte length, then that many bytes of UTF-8.
    /// The length must not exceed `max_len` nor the bytes left in the section.
    pub(crate) fn string(&mut self, what: &str, max_len: u64) -> Result<String, FormatError> {
        let at = self.pos();
        let len = self.u64(&format!("length of {what}"))?;
        if len > max_len {
            return Err(self.error_at(
                at,
                format!("{what} is {len} bytes long, more than the limit of {max_len}"),
            ));
        }
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(self.error_at(
                at + 8 + e.valid_up_to() as u64,
                format!("{what} is not valid UTF-8: {e}"),
            )),
        }
    }

    /// Fails unless every byte of the range has been consumed.
    pub(crate) fn expect_end(&self) -> Result<(), FormatError> {
        if self.pos == self.end {
            Ok(())
        } else {
            Err(self.error(format!(
                "{} unexpected trailing bytes at the end of the {}",
                self.remaining(),
                self.section
            )))
        }
    }
}
