//! Splitting a DIMSE message (a command or a data set) into P-DATA-TF PDUs of
//! one PDV each, every PDU within the peer's maximum length (PS3.8 9.3.5,
//! annex E).

use super::error::{PduError, PduErrorKind, Result};
use super::pdu_type;

/// Bytes each fragment adds to its data: the PDU header (type, reserved,
/// 4-byte length) and the PDV header (4-byte item length, context id,
/// message control header).
pub const PDV_OVERHEAD: usize = 12;

/// The most data one PDU can carry. The peer's maximum length bounds the
/// P-DATA-TF variable field, which holds the PDV's 6-byte header and its data.
fn max_fragment(max_pdu_length: u32) -> Result<usize> {
    match max_pdu_length {
        // PS3.8 D.1: 0 means no limit, but the PDU length field still has 4 bytes.
        0 => Ok(u32::MAX as usize - 6),
        n if n > 6 => Ok(n as usize - 6),
        n => Err(PduError::new(
            PduErrorKind::Unencodable,
            0,
            format!("a maximum PDU length of {n} leaves no room for data"),
        )),
    }
}

/// How many bytes [`fragment_pdata`] writes for `data_len` bytes of data.
pub fn fragmented_len(data_len: usize, max_pdu_length: u32, last: bool) -> Result<usize> {
    let count = fragment_count(data_len, max_fragment(max_pdu_length)?, last);
    count
        .checked_mul(PDV_OVERHEAD)
        .and_then(|headers| headers.checked_add(data_len))
        .ok_or_else(|| PduError::new(PduErrorKind::Unencodable, 0, "message too long"))
}

fn fragment_count(data_len: usize, fragment: usize, last: bool) -> usize {
    // An empty message still needs one PDU to carry its last-fragment bit.
    if data_len == 0 {
        usize::from(last)
    } else {
        data_len.div_ceil(fragment)
    }
}

/// Split `data` into P-DATA-TF PDUs for presentation context `context_id`,
/// each within `max_pdu_length` (the peer's Maximum Length; 0 = no limit).
/// With `last`, the final fragment is marked as the message's last; without
/// it the message goes on in a later call (to stream a large data set).
pub fn fragment_pdata(
    context_id: u8,
    is_command: bool,
    data: &[u8],
    max_pdu_length: u32,
    last: bool,
) -> Result<Vec<u8>> {
    let mut out = vec![0; fragmented_len(data.len(), max_pdu_length, last)?];
    fragment_pdata_into(context_id, is_command, data, max_pdu_length, last, &mut out)?;
    Ok(out)
}

/// As [`fragment_pdata`], into `out`, which must be exactly
/// [`fragmented_len`] bytes long. Returns the number of PDUs written.
pub fn fragment_pdata_into(
    context_id: u8,
    is_command: bool,
    data: &[u8],
    max_pdu_length: u32,
    last: bool,
    out: &mut [u8],
) -> Result<usize> {
    let expected = fragmented_len(data.len(), max_pdu_length, last)?;
    if out.len() != expected {
        return Err(PduError::new(
            PduErrorKind::Unencodable,
            0,
            format!("output of {} bytes for {expected} bytes of PDUs", out.len()),
        ));
    }
    let fragment = max_fragment(max_pdu_length)?;
    let count = fragment_count(data.len(), fragment, last);
    let mut chunks = data.chunks(fragment);
    let mut at = 0;
    for i in 0..count {
        let chunk = chunks.next().unwrap_or(&[]);
        let is_last = last && i + 1 == count;
        // Both fit in u32: a chunk is at most u32::MAX - 6 bytes.
        let pdu_len = (chunk.len() + 6) as u32;
        let control = u8::from(is_command) | u8::from(is_last) << 1;
        let header = &mut out[at..at + PDV_OVERHEAD];
        header[0] = pdu_type::P_DATA_TF;
        header[1] = 0;
        header[2..6].copy_from_slice(&pdu_len.to_be_bytes());
        header[6..10].copy_from_slice(&(pdu_len - 4).to_be_bytes());
        header[10] = context_id;
        header[11] = control;
        at += PDV_OVERHEAD;
        out[at..at + chunk.len()].copy_from_slice(chunk);
        at += chunk.len();
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_the_peer_limit_and_marks_the_last() {
        // 10 bytes at a limit of 10: 4 bytes of data per PDU.
        let out = fragment_pdata(3, true, b"abcdefghij", 10, true).unwrap();
        assert_eq!(
            out,
            [
                &[4, 0, 0, 0, 0, 10, 0, 0, 0, 6, 3, 1][..],
                b"abcd",
                &[4, 0, 0, 0, 0, 10, 0, 0, 0, 6, 3, 1],
                b"efgh",
                &[4, 0, 0, 0, 0, 8, 0, 0, 0, 4, 3, 3],
                b"ij",
            ]
            .concat()
        );
        // Not the message's end: no fragment is marked last.
        let out = fragment_pdata(3, false, b"ab", 0, false).unwrap();
        assert_eq!(
            out,
            [&[4, 0, 0, 0, 0, 8, 0, 0, 0, 4, 3, 0][..], b"ab"].concat()
        );
    }

    #[test]
    fn empty_messages() {
        let out = fragment_pdata(1, false, b"", 100, true).unwrap();
        assert_eq!(out, [4, 0, 0, 0, 0, 6, 0, 0, 0, 2, 1, 2]);
        assert!(fragment_pdata(1, false, b"", 100, false)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn the_output_must_fit_exactly() {
        let mut out = [0; 13];
        assert!(fragment_pdata_into(1, true, b"ab", 100, true, &mut out).is_err());
        let mut out = [0; 14];
        assert_eq!(
            fragment_pdata_into(1, true, b"ab", 100, true, &mut out).unwrap(),
            1
        );
        assert_eq!(
            fragmented_len(usize::MAX, 7, true).unwrap_err().kind,
            PduErrorKind::Unencodable
        );
    }
}
