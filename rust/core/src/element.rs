//! Element headers: tag, VR and length, read from a byte slice with every bound checked.

use crate::error::{ErrorKind, Result, ScanError};

/// The value length that means "undefined: ends at a delimiter".
pub const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;
pub const ITEM: u32 = 0xFFFE_E000;
pub const ITEM_DELIMITER: u32 = 0xFFFE_E00D;
pub const SEQUENCE_DELIMITER: u32 = 0xFFFE_E0DD;

/// How a dataset is encoded: the two axes a transfer syntax fixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub explicit_vr: bool,
    pub little_endian: bool,
}

impl Encoding {
    pub const IMPLICIT_LE: Encoding = Encoding {
        explicit_vr: false,
        little_endian: true,
    };
    pub const EXPLICIT_LE: Encoding = Encoding {
        explicit_vr: true,
        little_endian: true,
    };
    pub const EXPLICIT_BE: Encoding = Encoding {
        explicit_vr: true,
        little_endian: false,
    };

    #[inline]
    pub fn u16_at(self, buf: &[u8], pos: usize) -> u16 {
        let b = [buf[pos], buf[pos + 1]];
        if self.little_endian {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    }

    #[inline]
    pub fn u32_at(self, buf: &[u8], pos: usize) -> u32 {
        let b = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        if self.little_endian {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    }

    #[inline]
    pub fn tag_at(self, buf: &[u8], pos: usize) -> u32 {
        (u32::from(self.u16_at(buf, pos)) << 16) | u32::from(self.u16_at(buf, pos + 2))
    }
}

/// One element's header. `value_offset` is absolute in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u32,
    /// The explicit VR, or `None` for implicit encoding (or a VR that was not letters).
    pub vr: Option<[u8; 2]>,
    pub length: u32,
    pub offset: usize,
    pub value_offset: usize,
}

impl Header {
    #[inline]
    pub fn is_undefined(&self) -> bool {
        self.length == UNDEFINED_LENGTH
    }
}

/// VRs whose explicit encoding has two reserved bytes and a 32-bit length.
#[inline]
pub fn has_long_length(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    )
}

/// Every VR of PS3.5 table 6.2-1.
pub fn is_known_vr(vr: [u8; 2]) -> bool {
    has_long_length(vr)
        || matches!(
            &vr,
            b"AE"
                | b"AS"
                | b"AT"
                | b"CS"
                | b"DA"
                | b"DS"
                | b"DT"
                | b"FL"
                | b"FD"
                | b"IS"
                | b"LO"
                | b"LT"
                | b"PN"
                | b"SH"
                | b"SL"
                | b"SS"
                | b"ST"
                | b"TM"
                | b"UI"
                | b"UL"
                | b"US"
        )
}

#[inline]
fn is_letters(vr: [u8; 2]) -> bool {
    vr[0].is_ascii_uppercase() && vr[1].is_ascii_uppercase()
}

#[cold]
fn truncated(pos: usize, tag: Option<u32>, what: &str) -> ScanError {
    ScanError::new(ErrorKind::Truncated, pos, tag, what)
}

/// Read the header at `pos`; the header must end at or before `limit`.
///
/// Item and delimiter tags (group FFFE) have no VR in any encoding. In explicit VR,
/// two bytes that are not upper-case letters are read as an implicit-VR header
/// with `vr: None` (which the dataset walk refuses), and an unrecognised pair of
/// letters takes the 16-bit length form (as pydicom and DCMTK read them).
#[inline]
pub fn read_header(buf: &[u8], pos: usize, limit: usize, enc: Encoding) -> Result<Header> {
    let end8 = pos.checked_add(8).filter(|&e| e <= limit);
    let Some(end8) = end8 else {
        return Err(truncated(pos, None, "element header"));
    };
    let tag = enc.tag_at(buf, pos);
    if enc.explicit_vr && (tag >> 16) != 0xFFFE {
        let vr = [buf[pos + 4], buf[pos + 5]];
        if is_letters(vr) {
            if has_long_length(vr) {
                if end8 + 4 > limit {
                    return Err(truncated(pos, Some(tag), "element header"));
                }
                return Ok(Header {
                    tag,
                    vr: Some(vr),
                    length: enc.u32_at(buf, pos + 8),
                    offset: pos,
                    value_offset: end8 + 4,
                });
            }
            return Ok(Header {
                tag,
                vr: Some(vr),
                length: u32::from(enc.u16_at(buf, pos + 6)),
                offset: pos,
                value_offset: end8,
            });
        }
    }
    Ok(Header {
        tag,
        vr: None,
        length: enc.u32_at(buf, pos + 4),
        offset: pos,
        value_offset: end8,
    })
}

/// The end of a defined-length value, checked against `limit`.
#[inline]
pub fn value_end(h: &Header, limit: usize) -> Result<usize> {
    match h.value_offset.checked_add(h.length as usize) {
        Some(end) if end <= limit => Ok(end),
        _ => Err(ScanError::new(
            ErrorKind::LengthOverflow,
            h.offset,
            Some(h.tag),
            format!(
                "value of {} bytes at byte {} but only {} left",
                h.length,
                h.value_offset,
                limit.saturating_sub(h.value_offset)
            ),
        )),
    }
}
