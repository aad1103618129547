//! Digests of a whole object and of each fixed-size chunk, in one pass over the bytes.

use sha2::{Digest, Sha256};

/// The default chunk size of a chunk plan: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 20;

/// Bytes fed to the hashers at a time, so the whole-object and chunk hashers
/// both read them while they are in cache.
const STRIPE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Sha256,
    Blake3,
}

impl DigestAlgorithm {
    pub fn from_name(name: &str) -> Option<DigestAlgorithm> {
        match name {
            "sha256" => Some(DigestAlgorithm::Sha256),
            "blake3" => Some(DigestAlgorithm::Blake3),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Blake3 => "blake3",
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            DigestAlgorithm::Sha256 => Hasher::Sha256(Box::default()),
            DigestAlgorithm::Blake3 => Hasher::Blake3(Box::default()),
        }
    }
}

/// A running digest of either algorithm.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Box<Sha256>),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Blake3(h) => {
                h.update(bytes);
            }
        }
    }

    pub fn finish(self) -> [u8; 32] {
        match self {
            Hasher::Sha256(h) => h.finalize().into(),
            Hasher::Blake3(h) => *h.finalize().as_bytes(),
        }
    }
}

/// The digest of the whole object and of each chunk, lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub whole: String,
    pub chunks: Vec<String>,
}

/// Digest `data` whole, and chunk by chunk when `chunk_size` is given.
/// An empty object has one digest and no chunks.
pub fn digest(data: &[u8], algorithm: DigestAlgorithm, chunk_size: Option<usize>) -> Digests {
    digest_with(data, algorithm, chunk_size, |_| {})
}

/// As [`digest`], calling `consumed(end)` as the bytes before `end` are done
/// with (every chunk, or every 8 MiB without chunks), so a caller can release
/// the pages of a mapped file as it goes.
pub fn digest_with(
    data: &[u8],
    algorithm: DigestAlgorithm,
    chunk_size: Option<usize>,
    mut consumed: impl FnMut(usize),
) -> Digests {
    const PIECE: usize = 8 << 20;
    let mut whole = algorithm.hasher();
    let Some(chunk_size) = chunk_size.filter(|&c| c > 0) else {
        for (n, piece) in data.chunks(PIECE).enumerate() {
            whole.update(piece);
            consumed(n * PIECE + piece.len());
        }
        return Digests {
            whole: to_hex(&whole.finish()),
            chunks: Vec::new(),
        };
    };
    if data.len() <= chunk_size {
        // One chunk: its digest is the whole object's; hash once.
        whole.update(data);
        consumed(data.len());
        let whole = to_hex(&whole.finish());
        let chunks = if data.is_empty() {
            Vec::new()
        } else {
            vec![whole.clone()]
        };
        return Digests { whole, chunks };
    }
    let mut chunks = Vec::with_capacity(data.len().div_ceil(chunk_size));
    for (n, chunk) in data.chunks(chunk_size).enumerate() {
        let mut part = algorithm.hasher();
        for stripe in chunk.chunks(STRIPE) {
            whole.update(stripe);
            part.update(stripe);
        }
        chunks.push(to_hex(&part.finish()));
        consumed(n * chunk_size + chunk.len());
    }
    Digests {
        whole: to_hex(&whole.finish()),
        chunks,
    }
}

/// The raw 32-byte digest of `data`.
pub fn digest_raw(data: &[u8], algorithm: DigestAlgorithm) -> [u8; 32] {
    let mut h = algorithm.hasher();
    h.update(data);
    h.finish()
}

pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xF)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_abc() {
        let d = digest(b"abc", DigestAlgorithm::Sha256, None);
        assert_eq!(
            d.whole,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(d.chunks.is_empty());
    }

    #[test]
    fn chunks_cover_every_byte_and_match_their_own_digest() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for algorithm in [DigestAlgorithm::Sha256, DigestAlgorithm::Blake3] {
            let d = digest(&data, algorithm, Some(100_000));
            assert_eq!(d.chunks.len(), 3);
            assert_eq!(d.whole, digest(&data, algorithm, None).whole);
            for (i, c) in data.chunks(100_000).enumerate() {
                assert_eq!(d.chunks[i], digest(c, algorithm, None).whole);
            }
        }
    }

    #[test]
    fn blake3_of_empty() {
        let d = digest(b"", DigestAlgorithm::Blake3, Some(10));
        assert_eq!(
            d.whole,
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert!(d.chunks.is_empty());
    }
}
