//! Arbitrary bytes into the Part 10 scanner: it must return, never panic, and
//! what it returns must describe the input it was given.

#![no_main]

use dicomrelay_core::{scan, DigestAlgorithm, ScanOptions};
use libfuzzer_sys::fuzz_target;

/// Options from the first byte, so one input exercises one configuration and
/// the fuzzer can explore them all. The byte is still scanned as data: in a
/// Part 10 file it lies in the free-form preamble.
fn options(data: &[u8]) -> ScanOptions {
    let b = data.first().copied().unwrap_or(0);
    let digest = match b & 0b11 {
        1 => Some(DigestAlgorithm::Sha256),
        2 => Some(DigestAlgorithm::Blake3),
        _ => None,
    };
    // 0: no chunk plan; 1: a zero chunk size (must mean none); even: powers of
    // two from 64 B to 2 MiB, as the engine plans; odd: sizes that leave a
    // ragged last chunk. No tinier chunks: a hash per byte only slows the fuzzer.
    let chunk_size = match usize::from(b >> 2) {
        0 => None,
        1 => Some(0),
        n if n % 2 == 0 => Some(1 << (6 + n / 4)),
        n => Some(n * 97),
    };
    ScanOptions {
        digest,
        chunk_size,
        ..ScanOptions::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let options = options(data);
    let info = match scan(data, &options) {
        Ok(info) => info,
        Err(e) => {
            // Formatting the error is on the error path too; it must not panic.
            let _ = e.to_string();
            return;
        }
    };
    let len = data.len() as u64;
    assert!(info.dataset_offset <= len, "dataset offset past the end");
    if let Some(offset) = info.pixel_data_offset {
        let length = info.pixel_data_length.expect("pixel data offset without a length");
        let end = offset.checked_add(length).expect("pixel data end overflows");
        assert!(end <= len, "pixel data {offset}+{length} runs past {len} bytes");
    }
    match options.digest {
        None => assert!(info.digest.is_none() && info.chunk_digests.is_empty()),
        Some(_) => {
            assert_eq!(info.digest.as_ref().map(String::len), Some(64));
            let expected = match options.chunk_size {
                Some(chunk) if chunk > 0 => data.len().div_ceil(chunk),
                _ => 0,
            };
            assert_eq!(info.chunk_digests.len(), expected, "chunk digest count");
        }
    }
});
