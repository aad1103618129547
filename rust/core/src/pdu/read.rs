//! A bounds-checked cursor over a PDU body, and item framing for both
//! directions. Every read is checked against what is left; offsets in errors
//! are absolute (the cursor knows where its slice starts in the stream).

use super::error::{PduError, PduErrorKind, Result};

pub(super) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8], base: u64) -> Self {
        Reader { data, pos: 0, base }
    }

    /// The absolute offset of the next byte.
    pub fn offset(&self) -> u64 {
        self.base.saturating_add(self.pos as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| {
                PduError::new(
                    PduErrorKind::LengthMismatch,
                    self.offset(),
                    format!("{what} needs {n} bytes, {} left", self.remaining()),
                )
            })?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// The rest of the slice.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = self.data.get(self.pos..).unwrap_or(&[]);
        self.pos = self.data.len();
        out
    }

    /// A field with a 2-byte length prefix (UIDs and fields inside sub-items).
    pub fn u16_prefixed(&mut self, what: &'static str) -> Result<(u64, &'a [u8])> {
        let len = self.u16(what)?;
        let at = self.offset();
        Ok((at, self.bytes(usize::from(len), what)?))
    }

    /// The next item: its type, and a reader over exactly its value. Items have
    /// a 1-byte type, a reserved byte and a 2-byte length (PS3.8 9.3.2).
    pub fn item(&mut self) -> Result<(u8, Reader<'a>)> {
        let at = self.offset();
        let item_type = self.u8("item type")?;
        self.u8("item header")?;
        let len = usize::from(self.u16("item length")?);
        if len > self.remaining() {
            return Err(PduError::new(
                PduErrorKind::LengthMismatch,
                at,
                format!(
                    "item 0x{item_type:02X} of {len} bytes runs past its parent ({} left)",
                    self.remaining()
                ),
            ));
        }
        let base = self.offset();
        let body = self.bytes(len, "item value")?;
        Ok((item_type, Reader::new(body, base)))
    }

    /// Fail unless the whole slice was read: an item must fill its parent exactly.
    pub fn finish(&self, what: &'static str) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        Err(PduError::new(
            PduErrorKind::LengthMismatch,
            self.offset(),
            format!("{} bytes left over at the end of {what}", self.remaining()),
        ))
    }
}

/// Start an item (type, reserved, 2-byte length to patch); returns where it starts.
pub(super) fn begin_item(out: &mut Vec<u8>, item_type: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[item_type, 0, 0, 0]);
    start
}

/// Patch the length of the item begun at `start`, which must fit in 2 bytes.
pub(super) fn end_item(out: &mut [u8], start: usize, what: &'static str) -> Result<()> {
    let len = out.len() - start - 4;
    let len = u16::try_from(len).map_err(|_| {
        PduError::new(
            PduErrorKind::Unencodable,
            start as u64,
            format!("{what} is {len} bytes, more than an item's 65535"),
        )
    })?;
    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// A field with a 2-byte length prefix.
pub(super) fn put_u16_prefixed(out: &mut Vec<u8>, value: &[u8], what: &'static str) -> Result<()> {
    let len = u16::try_from(value.len()).map_err(|_| {
        PduError::new(
            PduErrorKind::Unencodable,
            out.len() as u64,
            format!("{what} is {} bytes, more than 65535", value.len()),
        )
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded_and_offsets_absolute() {
        let mut r = Reader::new(&[0, 1, 2, 3, 4], 100);
        assert_eq!(r.u16("a").unwrap(), 1);
        assert_eq!(r.offset(), 102);
        let err = r.u32("b").unwrap_err();
        assert_eq!((err.kind, err.offset), (PduErrorKind::LengthMismatch, 102));
        assert_eq!(r.bytes(usize::MAX, "c").unwrap_err().offset, 102);
        assert_eq!(r.finish("x").unwrap_err().offset, 102);
        assert_eq!(r.rest(), &[2, 3, 4]);
        r.finish("x").unwrap();
    }

    #[test]
    fn an_item_must_fit_its_parent() {
        // Type 0x10, reserved, length 3, but only two bytes follow.
        let mut r = Reader::new(&[0x10, 0, 0, 3, b'a', b'b'], 10);
        let err = r.item().err().unwrap();
        assert_eq!((err.kind, err.offset), (PduErrorKind::LengthMismatch, 10));
        let mut r = Reader::new(&[0x10, 0, 0, 2, b'a', b'b', 0x40], 10);
        let (item_type, mut value) = r.item().unwrap();
        assert_eq!(
            (item_type, value.offset(), value.rest()),
            (0x10, 14, &b"ab"[..])
        );
        assert_eq!(r.remaining(), 1);
    }

    #[test]
    fn items_longer_than_65535_bytes_do_not_encode() {
        let mut out = vec![9];
        let start = begin_item(&mut out, 0x40);
        out.extend_from_slice(&[b'1'; 65535]);
        end_item(&mut out, start, "x").unwrap();
        assert_eq!(&out[1..5], &[0x40, 0, 0xFF, 0xFF]);
        out.push(b'1');
        let err = end_item(&mut out, start, "x").unwrap_err();
        assert_eq!((err.kind, err.offset), (PduErrorKind::Unencodable, 1));
        assert!(put_u16_prefixed(&mut out, &[0; 65536], "y").is_err());
    }
}
