//! dicomrelay's hot path, in pure Rust: a zero-copy DICOM Part 10 scanner and
//! the digests and chunk plans the transfer engine sends.
//!
//! Every function takes bytes and returns small results or a [`ScanError`]; none
//! panics on input, allocates by a declared length, or recurses without a bound.

pub mod aligned;
pub mod channel;
pub mod charset;
pub mod dataset;
pub mod digest;
pub mod durable;
pub mod element;
pub mod error;
pub mod header_values;
pub mod pdu;
pub mod rewrite;
pub mod scan;
pub mod scp;
pub mod segment;
pub mod sequences;
pub mod socket;
pub mod syntax;
pub mod wire;

pub use digest::{digest, digest_with, DigestAlgorithm, Digests, DEFAULT_CHUNK_SIZE};
pub use error::{ErrorKind, ScanError};
pub use scan::{scan, InstanceInfo, ScanOptions, DEFAULT_MAX_INFLATED};
