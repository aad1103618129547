//! The bytes on disk: a segment's header block and each record's header.
//!
//! A segment file starts with one 4 KiB block naming it (magic, version, its
//! number, its capacity, a checksum). Records follow, each a 64-byte header
//! and its data, padded with zeros to a whole 4 KiB block, so that every write
//! starts and ends on a block and can bypass the page cache.
//!
//! Record header, little endian:
//!
//! | bytes  | field                                                     |
//! |--------|-----------------------------------------------------------|
//! | 0..4   | magic `DRrc`                                              |
//! | 4      | format version (1)                                        |
//! | 5      | digest algorithm (1 SHA-256, 2 BLAKE3)                    |
//! | 6..8   | flags (0)                                                 |
//! | 8..16  | data length                                               |
//! | 16..48 | the data's digest                                         |
//! | 48..56 | the record's own offset in its segment                    |
//! | 56..64 | checksum: the first 8 bytes of BLAKE3 over the segment's  |
//! |        | number (u64) and bytes 0..56                              |
//!
//! The checksum covers the segment number and the offset, so a header is valid
//! only where it was written: not in another segment, not at another offset.

use crate::DigestAlgorithm;

/// Records start and end on this boundary; the segment header is one block.
pub const BLOCK: u64 = 4096;
/// The size of a record's header, before its data.
pub const RECORD_HEADER: usize = 64;
/// Where a segment's first record starts.
pub const FIRST_RECORD: u64 = BLOCK;
/// The largest data length a record may declare (1 TiB).
pub const MAX_RECORD: u64 = 1 << 40;

const SEGMENT_MAGIC: &[u8; 8] = b"DRsegmnt";
const RECORD_MAGIC: &[u8; 4] = b"DRrc";
const VERSION: u8 = 1;
const SEGMENT_HEADER: usize = 40;

/// A record's header, decoded and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub algorithm: DigestAlgorithm,
    pub length: u64,
    pub digest: [u8; 32],
    pub offset: u64,
}

/// Why bytes are not a record header (or a segment header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderFault {
    /// Zeros where a header would start: no record was ever written there.
    Empty,
    BadMagic,
    BadVersion(u8),
    BadAlgorithm(u8),
    BadChecksum,
    /// A valid header written for another place.
    Misplaced,
    TooLong(u64),
}

impl HeaderFault {
    pub fn describe(self) -> String {
        match self {
            HeaderFault::Empty => "no record here".into(),
            HeaderFault::BadMagic => "bad magic".into(),
            HeaderFault::BadVersion(v) => format!("unknown format version {v}"),
            HeaderFault::BadAlgorithm(a) => format!("unknown digest algorithm {a}"),
            HeaderFault::BadChecksum => "header checksum mismatch".into(),
            HeaderFault::Misplaced => "header written for another offset".into(),
            HeaderFault::TooLong(n) => format!("declared length {n} too large"),
        }
    }
}

fn algorithm_code(a: DigestAlgorithm) -> u8 {
    match a {
        DigestAlgorithm::Sha256 => 1,
        DigestAlgorithm::Blake3 => 2,
    }
}

fn checksum(segment: u64, bytes: &[u8]) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(&segment.to_le_bytes());
    h.update(bytes);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// The bytes a record of `length` data bytes takes on disk, padding included;
/// None if it is larger than a record may be.
pub fn record_size(length: u64) -> Option<u64> {
    if length > MAX_RECORD {
        return None;
    }
    Some((RECORD_HEADER as u64 + length).div_ceil(BLOCK) * BLOCK)
}

impl RecordHeader {
    pub fn encode(&self, segment: u64) -> [u8; RECORD_HEADER] {
        let mut b = [0u8; RECORD_HEADER];
        b[0..4].copy_from_slice(RECORD_MAGIC);
        b[4] = VERSION;
        b[5] = algorithm_code(self.algorithm);
        b[8..16].copy_from_slice(&self.length.to_le_bytes());
        b[16..48].copy_from_slice(&self.digest);
        b[48..56].copy_from_slice(&self.offset.to_le_bytes());
        let sum = checksum(segment, &b[..56]);
        b[56..64].copy_from_slice(&sum);
        b
    }

    /// Decode the header read at `offset` of `segment`.
    pub fn decode(b: &[u8; RECORD_HEADER], segment: u64, offset: u64) -> Result<Self, HeaderFault> {
        if b.iter().all(|&x| x == 0) {
            return Err(HeaderFault::Empty);
        }
        if &b[0..4] != RECORD_MAGIC {
            return Err(HeaderFault::BadMagic);
        }
        if checksum(segment, &b[..56]) != b[56..64] {
            return Err(HeaderFault::BadChecksum);
        }
        if b[4] != VERSION {
            return Err(HeaderFault::BadVersion(b[4]));
        }
        let algorithm = match b[5] {
            1 => DigestAlgorithm::Sha256,
            2 => DigestAlgorithm::Blake3,
            other => return Err(HeaderFault::BadAlgorithm(other)),
        };
        let length = u64_at(b, 8);
        if length > MAX_RECORD {
            return Err(HeaderFault::TooLong(length));
        }
        if u64_at(b, 48) != offset {
            return Err(HeaderFault::Misplaced);
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[16..48]);
        Ok(RecordHeader {
            algorithm,
            length,
            digest,
            offset,
        })
    }
}

/// The first block of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segment: u64,
    /// The size the file was preallocated to.
    pub capacity: u64,
}

impl SegmentHeader {
    /// The whole first block, zero-padded.
    pub fn encode(&self) -> [u8; BLOCK as usize] {
        let mut b = [0u8; BLOCK as usize];
        b[0..8].copy_from_slice(SEGMENT_MAGIC);
        b[8] = VERSION;
        b[16..24].copy_from_slice(&self.segment.to_le_bytes());
        b[24..32].copy_from_slice(&self.capacity.to_le_bytes());
        let sum = checksum(self.segment, &b[..32]);
        b[32..SEGMENT_HEADER].copy_from_slice(&sum);
        b
    }

    /// Decode the first bytes of the file named as segment `segment`.
    pub fn decode(b: &[u8], segment: u64) -> Result<Self, HeaderFault> {
        if b.len() < SEGMENT_HEADER || b[..SEGMENT_HEADER].iter().all(|&x| x == 0) {
            return Err(HeaderFault::Empty);
        }
        if &b[0..8] != SEGMENT_MAGIC {
            return Err(HeaderFault::BadMagic);
        }
        if checksum(segment, &b[..32]) != b[32..SEGMENT_HEADER] {
            return Err(HeaderFault::BadChecksum);
        }
        if b[8] != VERSION {
            return Err(HeaderFault::BadVersion(b[8]));
        }
        if u64_at(b, 16) != segment {
            return Err(HeaderFault::Misplaced);
        }
        Ok(SegmentHeader {
            segment,
            capacity: u64_at(b, 24),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_refuse_every_flipped_bit() {
        let h = RecordHeader {
            algorithm: DigestAlgorithm::Blake3,
            length: 513_000,
            digest: [7; 32],
            offset: 8192,
        };
        let b = h.encode(3);
        assert_eq!(RecordHeader::decode(&b, 3, 8192), Ok(h));
        assert!(RecordHeader::decode(&b, 4, 8192).is_err());
        assert_eq!(
            RecordHeader::decode(&b, 3, 4096),
            Err(HeaderFault::Misplaced)
        );
        for bit in 0..RECORD_HEADER * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(RecordHeader::decode(&c, 3, 8192).is_err(), "bit {bit}");
        }
        let s = SegmentHeader {
            segment: 9,
            capacity: 1 << 30,
        };
        assert_eq!(SegmentHeader::decode(&s.encode(), 9), Ok(s));
        assert!(SegmentHeader::decode(&s.encode(), 8).is_err());
        assert_eq!(record_size(0), Some(BLOCK));
        assert_eq!(record_size(4032), Some(BLOCK));
        assert_eq!(record_size(4033), Some(2 * BLOCK));
        assert_eq!(record_size(MAX_RECORD + 1), None);
    }
}
