//! Arbitrary bytes into the PDU decoder: it must return, never panic; the same
//! bytes fed in other pieces must give the same PDUs and the same error; and
//! every PDU it returns must encode, and decode back to itself.

#![no_main]

use dicomrelay_core::pdu::{decode_all, Pdu, PduDecoder, PduError};
use libfuzzer_sys::fuzz_target;

/// The decoder's limit from the first byte: none, DCMTK's default, or small
/// ones the fuzzer can reach with short inputs.
fn max_pdu_length(b: u8) -> u32 {
    match b & 3 {
        0 => 0,
        1 => 16384,
        _ => u32::from(b >> 2),
    }
}

fn decode_in_pieces(data: &[u8], max: u32, piece: usize) -> (Vec<Pdu>, Result<(), PduError>) {
    let mut decoder = PduDecoder::new(max);
    let mut out = Vec::new();
    for chunk in data.chunks(piece) {
        if let Err(e) = decoder.feed(chunk, &mut out) {
            return (out, Err(e));
        }
    }
    let finished = decoder.finish();
    (out, finished)
}

fuzz_target!(|input: &[u8]| {
    // Two bytes of configuration, then the stream.
    let [config, piece, data @ ..] = input else {
        return;
    };
    let max = max_pdu_length(*config);
    let (whole, whole_result) = decode_in_pieces(data, max, data.len().max(1));
    // Formatting the error is on the error path too; it must not panic.
    if let Err(e) = &whole_result {
        let _ = e.to_string();
        let _ = e.kind.abort_reason();
    }
    let piece = usize::from(*piece % 16) + 1;
    let pieces = decode_in_pieces(data, max, piece);
    assert_eq!(pieces, (whole.clone(), whole_result), "pieces of {piece} bytes");
    for pdu in whole {
        let encoded = pdu.encode().expect("a decoded PDU encodes");
        let back = decode_all(&encoded, 0).expect("an encoded PDU decodes");
        assert_eq!(back, [pdu]);
    }
});
