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

use crate::aligned::{AlignedBytes, PAGE};
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

/// A whole frame, its payload owned (for a CHUNK with a digest: the data
/// after the digest, which is kept apart and checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: FrameHeader,
    pub payload: AlignedBytes,
    /// The digest a CHUNK claimed for its data.
    pub digest: Option<[u8; DIGEST_LEN]>,
    /// Whether the data matches the claimed digest.
    pub digest_ok: Option<bool>,
}

/// Where the next received bytes belong.
#[derive(Debug)]
enum Filling {
    Header {
        buf: [u8; HEADER_LEN],
        filled: usize,
    },
    Digest {
        header: FrameHeader,
        buf: [u8; DIGEST_LEN],
        filled: usize,
    },
    Payload {
        header: FrameHeader,
        digest: Option<[u8; DIGEST_LEN]>,
        buf: AlignedBytes,
        filled: usize,
    },
}

/// Reassembles frames from a byte stream of any fragmentation. Each byte is
/// copied once, straight into the frame it belongs to; a payload is allocated
/// only once its header has been checked (so never beyond `MAX_PAYLOAD`).
#[derive(Debug)]
pub struct FrameDecoder {
    filling: Filling,
    ready: Vec<Frame>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder {
            filling: Filling::Header {
                buf: [0; HEADER_LEN],
                filled: 0,
            },
            ready: Vec::new(),
        }
    }
}

impl FrameDecoder {
    /// Take bytes from a slice.
    pub fn push(&mut self, mut data: &[u8]) -> Result<(), WireError> {
        while !data.is_empty() {
            let target = self.target();
            let n = target.len().min(data.len());
            target[..n].copy_from_slice(&data[..n]);
            data = &data[n..];
            self.advance(n)?;
        }
        Ok(())
    }

    /// Take whatever bytes `reader` has now (until it would block or ends).
    pub fn read_from(
        &mut self,
        reader: &mut impl std::io::Read,
    ) -> std::io::Result<Result<(), WireError>> {
        loop {
            let n = match reader.read(self.target()) {
                Ok(0) => return Ok(Ok(())),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Ok(())),
                Err(e) => return Err(e),
            };
            if let Err(e) = self.advance(n) {
                return Ok(Err(e));
            }
        }
    }

    /// The rest of the payload being filled, for a reader to fill in place
    /// (then `payload_filled`); None between payloads.
    pub fn payload_space(&mut self) -> Option<&mut [u8]> {
        match &mut self.filling {
            Filling::Payload { buf, filled, .. } => Some(&mut buf.as_mut_slice()[*filled..]),
            _ => None,
        }
    }

    /// `n` more bytes of `payload_space` hold data.
    pub fn payload_filled(&mut self, n: usize) {
        if let Filling::Payload { buf, filled, .. } = &mut self.filling {
            *filled = (*filled + n).min(buf.len());
            if *filled == buf.len() {
                self.finish();
            }
        }
    }

    /// Frames completed so far, in order.
    pub fn take_frames(&mut self) -> Vec<Frame> {
        std::mem::take(&mut self.ready)
    }

    /// Bytes received towards the frame not yet whole.
    pub fn pending(&self) -> usize {
        match &self.filling {
            Filling::Header { filled, .. } => *filled,
            Filling::Digest { filled, .. } => HEADER_LEN + filled,
            Filling::Payload { filled, .. } => HEADER_LEN + filled,
        }
    }

    fn target(&mut self) -> &mut [u8] {
        match &mut self.filling {
            Filling::Header { buf, filled } => &mut buf[*filled..],
            Filling::Digest { buf, filled, .. } => &mut buf[*filled..],
            Filling::Payload { buf, filled, .. } => &mut buf.as_mut_slice()[*filled..],
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), WireError> {
        match &mut self.filling {
            Filling::Header { buf, filled } => {
                *filled += n;
                if *filled == HEADER_LEN {
                    let header = FrameHeader::decode(buf)?;
                    let algorithm = if header.kind == CHUNK {
                        chunk_algorithm(header.flags)?
                    } else {
                        None
                    };
                    self.filling = if algorithm.is_some() {
                        Filling::Digest {
                            header,
                            buf: [0; DIGEST_LEN],
                            filled: 0,
                        }
                    } else {
                        Self::payload(header, None, header.length as usize)
                    };
                    self.finish_if_empty();
                }
            }
            Filling::Digest {
                header,
                buf,
                filled,
            } => {
                *filled += n;
                if *filled == DIGEST_LEN {
                    let (header, digest) = (*header, *buf);
                    self.filling =
                        Self::payload(header, Some(digest), header.length as usize - DIGEST_LEN);
                    self.finish_if_empty();
                }
            }
            Filling::Payload { buf, filled, .. } => {
                *filled += n;
                if *filled == buf.len() {
                    self.finish();
                }
            }
        }
        Ok(())
    }

    fn payload(header: FrameHeader, digest: Option<[u8; DIGEST_LEN]>, len: usize) -> Filling {
        // Large payloads (chunk data) start on a page, ready for direct I/O.
        let buf = if len >= PAGE {
            AlignedBytes::zeroed(len)
        } else {
            AlignedBytes::unaligned(vec![0; len])
        };
        Filling::Payload {
            header,
            digest,
            buf,
            filled: 0,
        }
    }

    fn finish_if_empty(&mut self) {
        if let Filling::Payload { buf, .. } = &self.filling {
            if buf.is_empty() {
                self.finish();
            }
        }
    }

    fn finish(&mut self) {
        let done = std::mem::replace(
            &mut self.filling,
            Filling::Header {
                buf: [0; HEADER_LEN],
                filled: 0,
            },
        );
        if let Filling::Payload {
            header,
            digest,
            buf,
            ..
        } = done
        {
            let digest_ok = digest.map(|claimed| {
                // Checked by decode(): a CHUNK with a digest names a known algorithm.
                let algorithm = chunk_algorithm(header.flags)
                    .ok()
                    .flatten()
                    .unwrap_or(DigestAlgorithm::Sha256);
                crate::digest::digest_raw(&buf, algorithm) == claimed
            });
            self.ready.push(Frame {
                header,
                payload: buf,
                digest,
                digest_ok,
            });
        }
    }
}

/// The header of a frame carrying `payload_len` bytes (and a digest, if `digested`).
pub fn frame_header(
    kind: u8,
    flags: u8,
    stream: u32,
    offset: u64,
    digested: bool,
    payload_len: usize,
) -> Result<FrameHeader, WireError> {
    let length = payload_len + if digested { DIGEST_LEN } else { 0 };
    let length = u32::try_from(length)
        .ok()
        .filter(|&l| l <= MAX_PAYLOAD)
        .ok_or_else(|| wire_error(format!("payload of {length} bytes is too large")))?;
    Ok(FrameHeader {
        kind,
        flags,
        stream,
        length,
        offset,
    })
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
    let header = frame_header(kind, flags, stream, offset, digest.is_some(), payload.len())?;
    out.reserve(HEADER_LEN + header.length as usize);
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
                dec.push(piece).unwrap();
                for f in dec.take_frames() {
                    got.push((f.header, f.payload.to_vec(), f.digest_ok));
                }
            }
            assert_eq!(dec.pending(), 0);
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
        dec.push(&stream).unwrap();
        assert_eq!(dec.take_frames()[0].digest_ok, Some(false));
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
