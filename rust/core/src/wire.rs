//! Frames of the node-to-node wire protocol (docs/protocol.md), sans-IO:
//! headers encoded and decoded here, bytes moved by the caller.
//!
//! A frame is a 24-byte header and a payload:
//!
//! ```text
//! 0  "DR"        magic
//! 2  u8          protocol version (1)
//! 3  u8          kind
//! 4  u8          flags (for CHUNK: digest algorithm in bits 0-1)
//! 5  [u8; 3]     reserved, zero
//! 8  u32 BE      stream: the instance index within a transfer, or 0
//! 12 u32 BE      payload length
//! 16 u64 BE      offset: byte offset of a chunk within its instance, or 0
//! ```

use crate::digest::DigestAlgorithm;

pub const MAGIC: [u8; 2] = *b"DR";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 24;
/// The largest payload a peer may send: a 16 MiB chunk and its digest, with room.
pub const MAX_PAYLOAD: u32 = (16 << 20) + 4096;
/// The kind of a data chunk; the only kind whose payload the codec inspects.
pub const CHUNK: u8 = 4;
pub const DIGEST_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub length: u32,
    pub offset: u64,
}

/// Why bytes from a peer are not frames of this protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    pub detail: String,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for WireError {}

#[cold]
fn wire_error(detail: String) -> WireError {
    WireError { detail }
}

/// The digest algorithm a CHUNK's flags name, if any.
pub fn chunk_algorithm(flags: u8) -> Result<Option<DigestAlgorithm>, WireError> {
    match flags & 0b11 {
        0 => Ok(None),
        1 => Ok(Some(DigestAlgorithm::Sha256)),
        2 => Ok(Some(DigestAlgorithm::Blake3)),
        other => Err(wire_error(format!(
            "unknown chunk digest algorithm {other}"
        ))),
    }
}

pub fn algorithm_flags(algorithm: Option<DigestAlgorithm>) -> u8 {
    match algorithm {
        None => 0,
        Some(DigestAlgorithm::Sha256) => 1,
        Some(DigestAlgorithm::Blake3) => 2,
    }
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = VERSION;
        out[3] = self.kind;
        out[4] = self.flags;
        out[8..12].copy_from_slice(&self.stream.to_be_bytes());
        out[12..16].copy_from_slice(&self.length.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<FrameHeader, WireError> {
        if bytes[0..2] != MAGIC {
            return Err(wire_error(format!(
                "bad magic {:02x}{:02x}",
                bytes[0], bytes[1]
            )));
        }
        if bytes[2] != VERSION {
            return Err(wire_error(format!(
                "protocol version {} (this node speaks {VERSION})",
                bytes[2]
            )));
        }
        let header = FrameHeader {
            kind: bytes[3],
            flags: bytes[4],
            stream: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
            length: u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
            offset: u64::from_be_bytes([
                bytes[16], bytes[17], bytes[18], bytes[19], bytes[20], bytes[21], bytes[22],
                bytes[23],
            ]),
        };
        if header.length > MAX_PAYLOAD {
            return Err(wire_error(format!(
                "frame of {} bytes exceeds the {MAX_PAYLOAD}-byte limit",
                header.length
            )));
        }
        if header.kind == CHUNK {
            let algorithm = chunk_algorithm(header.flags)?;
            if algorithm.is_some() && (header.length as usize) < DIGEST_LEN {
                return Err(wire_error("chunk shorter than its digest".into()));
            }
        }
        Ok(header)
    }
}

/// A frame found in the decoder's buffer: its header and where its payload lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub header: FrameHeader,
    /// The payload (for a CHUNK with a digest: the data after the digest).
    pub payload: std::ops::Range<usize>,
    /// For a CHUNK with a digest: whether the data matches it.
    pub digest_ok: Option<bool>,
}

/// Reassembles frames from a byte stream of any fragmentation.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes before this are frames already handed out.
    consumed: usize,
}

impl FrameDecoder {
    /// The buffer to append received bytes to.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes received but not yet part of a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.consumed
    }

    /// Every whole frame now buffered, chunk digests checked.
    pub fn decode(&mut self) -> Result<Vec<Decoded>, WireError> {
        let mut frames = Vec::new();
        loop {
            let rest = &self.buf[self.consumed..];
            let Some(head) = rest.first_chunk::<HEADER_LEN>() else {
                break;
            };
            let header = FrameHeader::decode(head)?;
            let end = HEADER_LEN + header.length as usize;
            if rest.len() < end {
                break;
            }
            let mut start = self.consumed + HEADER_LEN;
            let stop = self.consumed + end;
            let mut digest_ok = None;
            if header.kind == CHUNK {
                if let Some(algorithm) = chunk_algorithm(header.flags)? {
                    let claimed = &self.buf[start..start + DIGEST_LEN];
                    start += DIGEST_LEN;
                    let actual = crate::digest::digest_raw(&self.buf[start..stop], algorithm);
                    digest_ok = Some(actual.as_slice() == claimed);
                }
            }
            frames.push(Decoded {
                header,
                payload: start..stop,
                digest_ok,
            });
            self.consumed = stop;
        }
        Ok(frames)
    }

    /// Forget the frames handed out by the last `decode`; their ranges become invalid.
    pub fn release(&mut self) {
        if self.consumed == self.buf.len() {
            self.buf.clear();
        } else if self.consumed > 0 {
            self.buf.drain(..self.consumed);
        }
        self.consumed = 0;
        // A burst of large frames should not pin its memory for the connection's life.
        if self.buf.capacity() > 4 * MAX_PAYLOAD as usize && self.buf.len() < MAX_PAYLOAD as usize {
            self.buf.shrink_to(MAX_PAYLOAD as usize);
        }
    }
}

/// Append a whole frame (header, the chunk digest when given, payload) to `out`.
pub fn encode_frame(
    out: &mut Vec<u8>,
    kind: u8,
    flags: u8,
    stream: u32,
    offset: u64,
    digest: Option<&[u8; DIGEST_LEN]>,
    payload: &[u8],
) -> Result<(), WireError> {
    let length = payload.len() + digest.map_or(0, |_| DIGEST_LEN);
    let length = u32::try_from(length)
        .ok()
        .filter(|&l| l <= MAX_PAYLOAD)
        .ok_or_else(|| wire_error(format!("payload of {length} bytes is too large")))?;
    let header = FrameHeader {
        kind,
        flags,
        stream,
        length,
        offset,
    };
    out.reserve(HEADER_LEN + length as usize);
    out.extend_from_slice(&header.encode());
    if let Some(d) = digest {
        out.extend_from_slice(d);
    }
    out.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_fragmentation() {
        let data = vec![9u8; 1000];
        let d = crate::digest::digest_raw(&data, DigestAlgorithm::Sha256);
        let mut stream = Vec::new();
        encode_frame(&mut stream, 1, 0, 0, 0, None, b"{\"hello\":1}").unwrap();
        encode_frame(&mut stream, CHUNK, 1, 7, 4096, Some(&d), &data).unwrap();
        for step in [1, 3, 24, 25, 1000, stream.len()] {
            let mut dec = FrameDecoder::default();
            let mut got = Vec::new();
            for piece in stream.chunks(step) {
                dec.buffer().extend_from_slice(piece);
                for f in dec.decode().unwrap() {
                    got.push((
                        f.header,
                        dec.bytes()[f.payload.clone()].to_vec(),
                        f.digest_ok,
                    ));
                }
                dec.release();
            }
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].1, b"{\"hello\":1}");
            assert_eq!(got[1].0.stream, 7);
            assert_eq!(got[1].0.offset, 4096);
            assert_eq!(got[1].1, data);
            assert_eq!(got[1].2, Some(true));
        }
    }

    #[test]
    fn a_tampered_chunk_fails_its_digest() {
        let data = vec![1u8; 64];
        let d = crate::digest::digest_raw(&data, DigestAlgorithm::Blake3);
        let mut stream = Vec::new();
        encode_frame(&mut stream, CHUNK, 2, 1, 0, Some(&d), &data).unwrap();
        let last = stream.len() - 1;
        stream[last] ^= 1;
        let mut dec = FrameDecoder::default();
        dec.buffer().extend_from_slice(&stream);
        assert_eq!(dec.decode().unwrap()[0].digest_ok, Some(false));
    }

    #[test]
    fn bad_headers_are_errors() {
        let mut h = FrameHeader {
            kind: 1,
            flags: 0,
            stream: 0,
            length: 0,
            offset: 0,
        }
        .encode();
        h[0] = b'X';
        assert!(FrameHeader::decode(&h).is_err());
        let h = FrameHeader {
            kind: 1,
            flags: 0,
            stream: 0,
            length: MAX_PAYLOAD + 1,
            offset: 0,
        };
        assert!(FrameHeader::decode(&h.encode()).is_err());
        let h = FrameHeader {
            kind: CHUNK,
            flags: 3,
            stream: 0,
            length: 40,
            offset: 0,
        };
        assert!(FrameHeader::decode(&h.encode()).is_err());
        let mut v = FrameHeader {
            kind: 1,
            flags: 0,
            stream: 0,
            length: 0,
            offset: 0,
        }
        .encode();
        v[2] = 9;
        assert!(FrameHeader::decode(&v).is_err());
    }
}
